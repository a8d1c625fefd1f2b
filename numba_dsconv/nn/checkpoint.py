"""Saving and loading a model (and optionally its optimiser and training state) as one ``.npz`` file.

Layout of the archive (NumPy's ``.npz``, no pickles):

- ``__format__``: the string ``"numba_dsconv-checkpoint"``; ``__version__``: the format version (int);
- ``__config__``: JSON of the keyword arguments that built the model (:func:`numba_dsconv.nn.dscnn`);
- ``param/<name>`` and ``buffer/<name>``: the model's parameters and buffers;
- ``optim/<key>``: the optimiser's state, when one was saved; ``__state__``: JSON of free training state
  (epoch, metrics, random generator state) given by the caller.

The file is written to a temporary name in the same folder, flushed to disk, then renamed over the target,
so a crash never leaves a half-written checkpoint under the real name.
"""

import contextlib
import json
import os
import uuid
import zipfile

import numpy as np

from .model import dscnn

FORMAT = "numba_dsconv-checkpoint"
VERSION = 1


def save_checkpoint(path, model, optimizer=None, state=None):
    """Write ``model`` (and ``optimizer``, ``state``) to ``path`` atomically.

    Parameters
    ----------
    path : str or os.PathLike
        Target file; conventionally ends in ``.npz`` (no suffix is added).
    model : numba_dsconv.nn.Model
    optimizer : numba_dsconv.nn.Optimizer, optional
    state : dict, optional
        JSON-serialisable training state returned by :func:`load_checkpoint`.
    """
    path = os.fspath(path)
    arrays = {
        "__format__": np.array(FORMAT),
        "__version__": np.array(VERSION),
        "__config__": np.array(json.dumps(getattr(model, "config", {}))),
        "__state__": np.array(json.dumps(state or {})),
    }
    arrays |= {f"param/{name}": p.value for name, p in model.parameters().items()}
    arrays |= {f"buffer/{name}": b for name, b in model.buffers().items()}
    if optimizer is not None:
        arrays |= {f"optim/{key}": np.asarray(v) for key, v in optimizer.state_dict().items()}
    with atomic_write(path, "wb") as handle:
        np.savez(handle, **arrays)


@contextlib.contextmanager
def atomic_write(path, mode="w"):
    """Open a temporary file beside ``path``; on success flush it to disk and rename it to ``path``.

    On any error the temporary file is removed and ``path`` keeps its old content. The file gets the usual
    permissions (the process umask), unlike ``tempfile.mkstemp``'s owner-only ones.
    """
    path = os.fspath(path)
    folder, name = os.path.split(os.path.abspath(path))
    tmp = os.path.join(folder, f".{name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        with open(tmp, mode.replace("w", "x")) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _open(path):
    """Read every array of a checkpoint; ValueError if the file is not one this version understands."""
    path = os.fspath(path)
    arrays = None
    try:
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.lib.npyio.NpzFile):
            with loaded as archive:
                arrays = {key: archive[key] for key in archive.files}
    except FileNotFoundError:
        raise
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as error:
        raise ValueError(f"{path} is not a numba_dsconv checkpoint: cannot read it as .npz ({error})") from error
    if arrays is None:
        raise ValueError(f"{path} is not a numba_dsconv checkpoint: a bare .npy array, not an .npz archive")
    if arrays.get("__format__") is None or str(arrays["__format__"]) != FORMAT:
        raise ValueError(f"{path} is not a numba_dsconv checkpoint (no '__format__' = {FORMAT!r} entry)")
    version = int(arrays["__version__"])
    if version != VERSION:
        raise ValueError(f"{path} is checkpoint format version {version}; this version of numba_dsconv reads "
                         f"version {VERSION}")
    return arrays


def _check_fits(path, kind, targets, arrays):
    """Raise ValueError unless ``arrays`` holds ``<kind>/<name>`` for exactly the targets, with their shapes."""
    saved = {key[len(kind) + 1:] for key in arrays if key.startswith(kind + "/")}
    if saved != set(targets):
        missing = sorted(set(targets) - saved)
        extra = sorted(saved - set(targets))
        raise ValueError(f"{path} does not fit this model: {kind}s missing from the file {missing}, "
                         f"in the file but not in the model {extra}")
    for name, target in targets.items():
        value = arrays[f"{kind}/{name}"]
        if value.shape != target.shape:
            raise ValueError(f"{path} does not fit this model: {kind} {name!r} has shape {value.shape}, "
                             f"the model needs {target.shape}")


def load_checkpoint(path, model, optimizer=None):
    """Load a checkpoint into ``model`` (and ``optimizer``); return the saved training state.

    Nothing is changed unless the whole file fits: every name and shape is checked before the first copy.

    Parameters
    ----------
    path : str or os.PathLike
    model : numba_dsconv.nn.Model
    optimizer : numba_dsconv.nn.Optimizer, optional
        Restored from the file's optimiser state; a ValueError if the file has none.

    Returns
    -------
    state : dict
        The ``state`` given to :func:`save_checkpoint` (empty if none).

    Raises
    ------
    ValueError
        The file is not a checkpoint, has another format version, or does not fit the model or optimiser.
    """
    arrays = _open(path)
    params = {name: p.value for name, p in model.parameters().items()}
    buffers = model.buffers()
    _check_fits(path, "param", params, arrays)
    _check_fits(path, "buffer", buffers, arrays)
    if optimizer is not None:
        optim_state = {key[len("optim/"):]: v for key, v in arrays.items() if key.startswith("optim/")}
        if not optim_state:
            raise ValueError(f"{path} holds no optimiser state to resume from")
        try:
            optimizer.load_state_dict(dict(optim_state))
        except ValueError as error:
            raise ValueError(f"{path} does not fit this optimiser: {error}") from error
    for kind, targets in (("param", params), ("buffer", buffers)):
        for name, target in targets.items():
            target[...] = arrays[f"{kind}/{name}"]
    return json.loads(str(arrays["__state__"]))


def load_model(path, **overrides):
    """Build the model a checkpoint describes and load its weights.

    Parameters
    ----------
    path : str or os.PathLike
    **overrides
        Replace saved build arguments (``device="cpu"`` to load a GPU-trained model on the CPU, for instance).

    Returns
    -------
    Model
    """
    arrays = _open(path)
    config = json.loads(str(arrays["__config__"])) | overrides
    try:
        model = dscnn(**config)
    except TypeError as error:
        raise ValueError(f"{path} describes a model this version cannot build ({config}): {error}") from error
    load_checkpoint(path, model)
    return model
