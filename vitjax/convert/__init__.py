"""Reading public checkpoints and mapping them onto vitjax params, one key table per layout."""
