"""The class splits of CIFAR-FS and FC100, as data (names as in CIFAR-100's ``meta`` file)."""

from __future__ import annotations

# CIFAR-FS: Bertinetto, Henriques, Torr & Vedaldi, "Meta-learning with differentiable
# closed-form solvers", ICLR 2019. The split of their repository (github.com/bertinetto/r2d2,
# splits/bertinetto/{train,val,test}.txt), here checked against the copy torchmeta ships
# (torchmeta/datasets/assets/cifar100/cifar-fs/*.json). 64/16/20 fine classes, chosen at random
# across superclasses (so, unlike FC100, a superclass can span several splits).
CIFAR_FS_CLASSES: dict[str, tuple[str, ...]] = {
    "train": (
        "apple", "aquarium_fish", "bear", "bee", "bottle", "bowl", "boy", "bridge", "bus", "can",
        "castle", "caterpillar", "chair", "clock", "cloud", "cockroach", "couch", "cup", "dinosaur",
        "dolphin", "elephant", "forest", "girl", "hamster", "house", "kangaroo", "keyboard",
        "lawn_mower", "lion", "lizard", "lobster", "mountain", "mouse", "mushroom", "oak_tree",
        "orange", "orchid", "palm_tree", "pear", "pine_tree", "plate", "porcupine", "possum",
        "rabbit", "raccoon", "ray", "road", "seal", "shrew", "skunk", "skyscraper", "snake",
        "spider", "squirrel", "streetcar", "sunflower", "tank", "tiger", "train", "trout", "tulip",
        "turtle", "willow_tree", "wolf",
    ),
    "val": (
        "beaver", "beetle", "butterfly", "camel", "cattle", "crab", "crocodile", "flatfish", "lamp",
        "maple_tree", "motorcycle", "otter", "sea", "shark", "television", "tractor",
    ),
    "test": (
        "baby", "bed", "bicycle", "chimpanzee", "fox", "leopard", "man", "pickup_truck", "plain",
        "poppy", "rocket", "rose", "snail", "sweet_pepper", "table", "telephone", "wardrobe",
        "whale", "woman", "worm",
    ),
}  # fmt: skip

# FC100: Oreshkin, Rodriguez & Lacoste, "TADAM: Task dependent adaptive metric for improved
# few-shot learning", NeurIPS 2018. Split by superclass so that test classes share no
# superclass with training ones: 12/4/4 superclasses (60/20/20 fine classes). The standard
# split (TADAM's code; also torchmeta's assets/cifar100/fc100): by coarse label index, train
# 1, 2, 3, 4, 5, 6, 9, 10, 15, 17, 18, 19; val 8, 11, 13, 16; test 0, 7, 12, 14.
FC100_SUPERCLASSES: dict[str, tuple[str, ...]] = {
    "train": (
        "fish", "flowers", "food_containers", "fruit_and_vegetables", "household_electrical_devices",
        "household_furniture", "large_man-made_outdoor_things", "large_natural_outdoor_scenes",
        "reptiles", "trees", "vehicles_1", "vehicles_2",
    ),
    "val": ("large_carnivores", "large_omnivores_and_herbivores", "non-insect_invertebrates", "small_mammals"),
    "test": ("aquatic_mammals", "insects", "medium_mammals", "people"),
}  # fmt: skip
