"""Compositing on the model's device (``avatar.device_composite``) against OpenCV's."""

from __future__ import annotations

import functools
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from avatar import device_composite
from avatar.avatar import Avatar, FrameRequest
from avatar.device_composite import blur


def _requests(avatar: Avatar, n: int = 5) -> list[FrameRequest]:
    rng = np.random.default_rng(3)
    mel = (avatar.mel_mean + avatar.mel_std * rng.standard_normal(
        (n, avatar.gen.cfg.mel_bins, avatar.mel_frames))).astype(np.float32)
    reqs = [FrameRequest(idle_index=2 * i, mel=mel[i]) for i in range(n)]
    walk = avatar.walker(1)
    if walk is not None:  # frames from the motion bank too
        reqs += [FrameRequest(idle_index=0, mel=mel[i], base=walk.next("speaking"))
                 for i in range(2)]
    return reqs


def _compare(avatar: Avatar) -> None:
    reqs = _requests(avatar)
    for colour in ("field", "mean"):
        for detail in ("keep", "off"):
            avatar.colour, avatar.detail = colour, detail
            avatar.compositing = "cpu"
            cpu = np.stack(avatar.render(reqs)).astype(np.int16)
            avatar.compositing = "device"
            dev = np.stack(avatar.render(reqs)).astype(np.int16)
            diff = np.abs(cpu - dev)
            # Interpolation in fixed point (OpenCV) against floating point (torch): a level
            # now and then, nowhere more than two; three where the texture bank's fine band
            # goes through one more bicubic warp (a region enlarged on screen), or where the
            # refiner's detail makes the paint itself sharper.
            fine = (avatar.texture is not None and avatar.texture.screen_size is not None
                    or avatar.refiner is not None)
            assert diff.max() <= (3 if fine else 2), (colour, detail, diff.max())
            assert (diff > 0).mean() < 0.01, (colour, detail)
            # The mouth is painted at all: frames differ from the plain idle frames.
            assert any(np.abs(dev[i] - avatar.idle_frame(r.idle_index)).max() > 10
                       for i, r in enumerate(reqs) if r.base is None)


def test_the_device_puts_the_mouth_in_as_opencv_does(bundle: Path, monkeypatch) -> None:
    avatar = Avatar.load(bundle, "cpu")
    # The batch in one pass (frames of the idle loop and the motion bank share a ring and
    # enlarge the paint): the frame-by-frame fallback must not be what is compared.
    def no_fallback(*args, **kwargs):  # noqa: ANN202
        raise AssertionError("frame by frame")

    monkeypatch.setattr(device_composite, "_frame_by_frame", no_fallback)
    _compare(avatar)
    # The bundle's texture bank (its fine bands), which its refiner otherwise replaces.
    _compare(Avatar.load(bundle, "cpu", refine=False))
    monkeypatch.undo()
    # And the fallback (boxes that shrink the paint, frames with rings of their own).
    monkeypatch.setattr(device_composite, "composite",
                        functools.partial(device_composite.composite, batched=False))
    _compare(avatar)


def test_its_blur_is_opencvs() -> None:
    img = np.random.default_rng(0).random((40, 52, 3)).astype(np.float32) * 255
    x = torch.from_numpy(img).permute(2, 0, 1)[None]
    for sigma in (0.8, 1.95, 5.5):
        want = cv2.GaussianBlur(img, (0, 0), sigma)
        got = blur(x, sigma)[0].permute(1, 2, 0)
        assert np.abs(got.numpy() - want).max() < 0.01, sigma
    # A sigma per image of a batch: each as if blurred alone.
    both = blur(torch.cat([x, x.flip(-1)]), [0.8, 5.5])
    assert torch.allclose(both[0], blur(x, 0.8)[0], atol=1e-3)
    assert torch.allclose(both[1], blur(x.flip(-1), 5.5)[0], atol=1e-3)


@pytest.mark.gpu
def test_on_the_gpu_too(bundle: Path) -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    _compare(Avatar.load(bundle, "cuda:0", precision="fp32"))


def test_the_server_composites_where_it_is_told(bundle: Path) -> None:
    from streaming.app import Server, ServerConfig

    srv = Server({"presenter": bundle}, ServerConfig(allow_unconsented=True,
                                                     compositing="device", max_batch=4))
    srv.load()
    try:
        assert srv.scheduler.cfg.max_batch == 4
        assert [a.compositing for lane in srv.scheduler.lanes
                for a in lane.renderers.values()] == ["device"]
    finally:
        srv.scheduler.stop()
