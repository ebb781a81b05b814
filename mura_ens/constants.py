"""Names fixed by the MURA layout and by DESIGN.md's contracts."""

BODY_PARTS: tuple[str, ...] = (
    "XR_ELBOW",
    "XR_FINGER",
    "XR_FOREARM",
    "XR_HAND",
    "XR_HUMERUS",
    "XR_SHOULDER",
    "XR_WRIST",
)

#: Manifest columns in output order. ``split`` is optional on input.
MANIFEST_COLUMNS: tuple[str, ...] = ("path", "study", "patient", "body_part", "label", "split")
REQUIRED_MANIFEST_COLUMNS: tuple[str, ...] = ("path", "study", "patient", "body_part", "label")

#: Manifest ``split`` values. MURA's own ``valid`` folder is our *test* set.
SPLITS: tuple[str, ...] = ("train", "valid", "test")

#: Entry-point group through which every plugin (built-in or not) is found.
PLUGIN_GROUP = "mura_ens.plugins"

#: Env var: comma list of plugin names to load (others are ignored).
PLUGINS_ENV = "MURA_ENS_PLUGINS"

#: Env var: when "1", user errors show a traceback.
DEBUG_ENV = "MURA_ENS_DEBUG"

#: File suffixes treated as images when walking folders.
IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
