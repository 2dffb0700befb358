"""The study's closed sets, in plain Python so that anything (the API too) can import them without torch."""

SEED_MODELS: tuple[str, ...] = ("linear_l1", "linear_mse", "relu_l1", "relu_mse")  # the study's four autoencoders
KEEP_MODELS: tuple[str, ...] = ("relu_keep",)  # beyond the study: the seed's encoder trained to keep neighbourhoods
# reference maps drawn by well-kept libraries, not trained here: read-only models (codes, no weights)
REFERENCE_MAPS: tuple[str, ...] = ("pca", "umap", "tsne")
MODEL_NAMES: tuple[str, ...] = SEED_MODELS + KEEP_MODELS + REFERENCE_MAPS
DEFAULT_MODEL = "relu_mse"  # the model a read shows when none is named (the study's best of its four)


def model_kind(name: str) -> str:
    """``trained`` (an autoencoder, relu_keep) or ``reference map`` (fitted by a library, no weights)."""
    return "reference map" if name in REFERENCE_MAPS else "trained"
DISTANCES: tuple[str, ...] = ("l1", "l2")
# data set name -> (torchvision class name, training samples, test samples)
DATASETS: dict[str, tuple[str, int, int]] = {
    "mnist": ("MNIST", 60_000, 10_000),
    "fashion-mnist": ("FashionMNIST", 60_000, 10_000),
}
DEFAULT_KS: tuple[int, ...] = (5, 10, 20, 50)  # k of the metric tables
BY_LABEL_K = 20  # k of score@k by label
DEFAULT_K = 200  # K: neighbours kept per sample
PIXEL_UNIT = 2.0 / 255.0  # byte pixel-space distances are reported on the [-1, 1] inputs the models see

# the name a user gives an uploaded data set or embedding (a regular expression, and the rule in words)
USER_NAME = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,31}"
USER_NAME_RULE = "1 to 32 letters, digits, '_', '.' or '-', starting with a letter or digit"


# relu_keep trains in two phases: its encoder for this share of the study's epochs (at least one), then the
# map of its training codes refined under t-SNE's objective (common/compute/refining.py): this many iterations
# of early exaggeration, then this many more (chosen by measurement: docs/keeping.md)
KEEP_ENCODER_SHARE = 0.3
KEEP_EARLY_ITERATIONS = 250
KEEP_LATE_ITERATIONS = 600


def keep_encoder_epochs(epochs: int) -> int:
    """relu_keep's encoder epochs for a study of ``epochs`` epochs."""
    return max(1, round(epochs * KEEP_ENCODER_SHARE))
