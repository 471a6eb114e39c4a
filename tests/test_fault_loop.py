"""1,000 explanations on the demo model with 100 injected faults (``make test-slow``).

After every fault no hook is left on the model; memory stays bounded over the loop; the last explanation is
bit-identical to the first. The numbers are recorded in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import gc
import os
import random
import time

import numpy as np
import pytest
from PIL import Image

import mmlens

RUNS = int(os.environ.get("MMLENS_FAULT_RUNS", "1000"))
FAULTS = RUNS // 10
METHODS = [("saliency", {}), ("attention", {}), ("gradcam", {}), ("integrated_gradients", {"steps": 4}),
           ("input_x_gradient", {})]
Q = "what color is the circle?"


class Injected(Exception):
    """The fault raised from inside a language-model block while the method's hooks are in place."""


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _explain(subject, image, i: int):
    method, options = METHODS[i % len(METHODS)]
    return mmlens.explain(subject, image, Q, method=method, answer="red", **options)


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="reads memory from /proc")
def test_fault_loop_leaves_no_hooks_and_no_drift():
    subject = mmlens.load("demo")
    image = Image.new("RGB", (64, 64), (220, 30, 30))
    blocks = list(subject.adapter.parts().lm_blocks)
    rng = random.Random(0)
    faulty = set(rng.sample(range(RUNS), FAULTS))
    first = _explain(subject, image, 0)
    for i in range(1, 2 * len(METHODS)):  # warm-up: lazy imports and caches before the memory baseline
        _explain(subject, image, i)
    gc.collect()
    rss0, start, faults = _rss_mb(), time.perf_counter(), 0
    for i in range(RUNS):
        if i in faulty:
            block = rng.choice(blocks)
            kind = rng.choice([Injected, RuntimeError, MemoryError])

            def boom(*args, **kwargs):
                raise kind("injected fault")

            block.forward = boom
            try:
                with pytest.raises(kind, match="injected fault"):
                    _explain(subject, image, i)
            finally:
                del block.forward
            faults += 1
        else:
            _explain(subject, image, i)
        assert mmlens.count_hooks(subject.model) == 0, f"hooks left after run {i}"
    gc.collect()
    growth, seconds = _rss_mb() - rss0, time.perf_counter() - start
    last = _explain(subject, image, 0)
    print(f"\nfault loop: {RUNS} runs, {faults} faults, {seconds:.1f} s, RSS {rss0:.1f} -> {rss0 + growth:.1f} MB "
          f"({growth:+.1f} MB)")
    assert faults == FAULTS
    assert growth < 100, f"memory grew by {growth:.1f} MB over {RUNS} runs"
    assert np.array_equal(first.position_scores, last.position_scores)
    assert all(np.array_equal(a, b) for a, b in zip(first.pixel_maps[0], last.pixel_maps[0]))
    assert first.to_dict() == last.to_dict()
