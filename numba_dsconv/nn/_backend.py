"""Which module's kernels a layer calls: one place that maps a device name to a backend."""

DEVICES = ("cpu", "cuda")


def backend_ops(device):
    """Return the module holding the convolution kernels for ``device``.

    Parameters
    ----------
    device : {"cpu", "cuda"}

    Raises
    ------
    ValueError
        For an unknown device, or for ``"cuda"`` while this version has no GPU backend.
    """
    if device == "cpu":
        from .. import cpu

        return cpu
    if device == "cuda":
        raise ValueError(
            "device='cuda' needs the GPU backend (numba_dsconv.cuda), which this version does not have; "
            "use device='cpu'"
        )
    raise ValueError(f"device must be one of {DEVICES}; got {device!r}")
