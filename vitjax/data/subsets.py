"""The image subsets the papers analyse, chosen exactly as their code chooses them.

- Teaching Matters (Walmer et al., CVPR'23): ImageNet-50, the first 100 files by name of 50 classes
  of the ImageNet train split (vit_analysis `imagenet50_dataset.py`, `data/imagenet_50.txt`).
- What Do Self-Supervised ViTs Learn? (Park et al., ICLR'23): a 2^-6 subsample of each class of
  Imagenette-160 val (cl-vs-mim `utils.py::subsample`, called in `self_attention_analysis.ipynb`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

# vit_analysis data/imagenet_50.txt: WordNet id and the name the paper's plots use.
IMAGENET_50_NAMES = {
    "n01601694": "Dipper",
    "n01669191": "Box Turtle",
    "n01755581": "Diamondback Snake",
    "n01770393": "Scorpion",
    "n01855672": "Goose",
    "n02018207": "Water Hen",
    "n02058221": "Albatross",
    "n02096177": "Cairn Terrier",
    "n02097130": "Giant Schnauzer",
    "n02099267": "Flat-Coated Retriever",
    "n02100877": "Irish Setter",
    "n02104365": "Schipperke",
    "n02106030": "Collie",
    "n02114855": "Coyote",
    "n02125311": "Mountain Lion",
    "n02133161": "Black Bear",
    "n02484975": "Guenon",
    "n02489166": "Proboscis Monkey",
    "n02747177": "Trash Bin",
    "n02906734": "Broom",
    "n03124170": "Cowboy Hat",
    "n03272010": "Electric Guitar",
    "n03337140": "File Cabinet",
    "n03483316": "Hair Dryer",
    "n03498962": "Hatchet",
    "n03710721": "Maillot",
    "n03717622": "Manhole Cover",
    "n03733281": "Maze",
    "n03759954": "Microphone",
    "n03775071": "Mitten",
    "n03814639": "Neck Brace",
    "n03837869": "Obelisk",
    "n03838899": "Oboe",
    "n03854065": "Organ",
    "n03954731": "Woodworking Plane",
    "n03983396": "Soda Bottle",
    "n04026417": "Purse",
    "n04200800": "Shoe Shop",
    "n04209239": "Shower Curtain",
    "n04311004": "Steel Arch Bridge",
    "n04380533": "Table Lamp",
    "n04428191": "Threshing Machine",
    "n04443257": "Tobacco Shop",
    "n04509417": "Unicycle",
    "n04525305": "Vending Machine",
    "n04554684": "Washing Machine",
    "n04606251": "Wreck",
    "n07583066": "Guacamole",
    "n07711569": "Mashed Potato",
    "n07753592": "Banana",
}
# Label k of ImageNet-50 is the k-th WordNet id in sorted order (their `find_classes` sorts).
IMAGENET_50 = tuple(sorted(IMAGENET_50_NAMES))

# torchvision's IMG_EXTENSIONS, which their copy of `make_dataset` filters on.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def imagenet50_files(train_dir: str, per_class: int = 100) -> list[tuple[str, int]]:
    """(path, label) of Teaching Matters' ImageNet-50: 5,000 images from the ImageNet train split.

    Follows vit_analysis `imagenet50_dataset.py::make_dataset` (with `--perclass 100`): classes in
    sorted order, labels 0..49 in that order; in each class folder (walked with `os.walk`, sorted,
    following links) the first `per_class` names in sorted order, of which those with an image
    extension are kept. (The extension filter comes after the cut, as in their code, so a stray
    non-image file among the first names leaves that class short rather than reaching further.)
    """
    files, missing = [], []
    for label, wnid in enumerate(IMAGENET_50):
        class_dir = os.path.join(os.path.expanduser(train_dir), wnid)
        chosen = [
            os.path.join(root, name)
            for root, _, names in sorted(os.walk(class_dir, followlinks=True))
            for name in sorted(names)[:per_class]
            if name.lower().endswith(IMAGE_EXTENSIONS)
        ]
        if not chosen:
            missing.append(wnid)
        files.extend((path, label) for path in chosen)
    if missing:
        raise FileNotFoundError(
            f"ImageNet-50 needs the ImageNet train split with one folder per WordNet id; "
            f"{train_dir} has no images for {len(missing)} of its classes: {', '.join(missing)}"
        )
    return files


def subsample(labels: Sequence[int], ratio: float = 2**-6) -> list[int]:
    """Indices of cl-vs-mim's per-class subsample (`utils.py::subsample` with `random=False`).

    Classes are taken in the order they first appear in `labels`; from each class the first
    `int(count * ratio)` indices in dataset order (Imagenette-160 val: 6 of each class's ~390
    images, 60 in all, which their loader serves as one batch of 64). To select the same images,
    pass the labels in torchvision `ImageFolder` order: class folders sorted, files sorted by name.
    """
    by_class: dict[int, list[int]] = {}
    for index, label in enumerate(labels):
        by_class.setdefault(int(label), []).append(index)
    return [index for members in by_class.values() for index in members[: int(len(members) * ratio)]]
