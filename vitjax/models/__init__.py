"""Model definitions: one configurable ViT, the ResNet comparator, and the registry of names."""
