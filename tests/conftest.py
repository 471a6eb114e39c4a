import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from mmlens.testing import tiny_subject  # noqa: E402
from mmlens.testing.tiny_models import FAMILIES, tiny_images  # noqa: E402

# Tiny models gain nothing from intra-op threads, and lose a lot to OpenMP spinning on shared cores.
torch.set_num_threads(1)

_CACHE: dict = {}


def subject_for(family: str):
    """One tiny subject per family per test session (building is cheap, but not free)."""
    if family not in _CACHE:
        _CACHE[family] = tiny_subject(family)
    return _CACHE[family]


def lazy_metric(module: str, name: str):
    """The metric function ``name`` of ``mmlens.evaluation.metrics.<module>``, imported on first call: importing the
    metrics subpackage while pytest collects would rebind ``mmlens.evaluation.metrics`` (the catalog function that
    test modules collected later import) to the subpackage."""
    def call(*args, **kwargs):
        import importlib

        return getattr(importlib.import_module(f"mmlens.evaluation.metrics.{module}"), name)(*args, **kwargs)

    return call


@pytest.fixture(params=FAMILIES)
def family(request) -> str:
    return request.param


@pytest.fixture
def subject(family):
    return subject_for(family)


@pytest.fixture
def images(family):
    # several images: multi-tile for llava_next, several images in one prompt for the others
    return tiny_images(family, n=3 if family == "llava_next" else 2)


#: Family-parametrized tests whose assertions read image tokens as positions of the language model's sequence
#: (or its projector output): Mllama's images are cross-attention keys instead. tests/test_mllama.py (geometry,
#: tracing) and tests/test_mllama_methods.py (methods, internals) check the same properties over the keys; the
#: methods that cannot apply refuse in one line (also checked there).
_GEO, _METHODS = "tests/test_mllama.py", "tests/test_mllama_methods.py"
KEY_SPACE_SKIPS = {
    "test_attention_method_equals_eager_weights": f"stacks (N, N) self-attention of every layer; {_METHODS}",
    "test_batched_input_gradient_methods_equal_the_per_target_loop": f"references at resid_pre; {_METHODS}",
    "test_batched_attention_gradient_methods_equal_the_per_target_loop": f"sequence-only references; {_METHODS}",
    "test_cached_vision_integrated_gradients_equal_captum_on_the_full_model": f"no get_image_features; {_METHODS}",
    "test_cached_vision_smoothgrad_equals_noise_tunnel_on_the_full_model": f"no get_image_features; {_METHODS}",
    "test_mllm_vision_tower_decomposition_is_exact": f"refuses: no projector into the sequence ({_METHODS})",
    "test_every_method_runs_on_every_family": f"maps live in the key scores; {_METHODS}",
    "test_positions_equal_placeholders_and_grids_multiply_out": f"keys, not placeholders; {_GEO}",
    "test_marking_a_patch_moves_exactly_its_image_tokens": f"marking moves exactly its keys; {_GEO}",
    "test_heatmap_has_image_size_and_puts_scores_in_their_box": f"heatmap over key scores; {_GEO}",
    "test_integrated_gradients_equals_direct_captum_call_and_is_complete": f"IG over the keys; {_METHODS}",
    "test_head_image_share_matches_captured_weights": f"refuses: no image tokens in the sequence ({_METHODS})",
    "test_projector_out_rows_are_the_lm_image_tokens_in_sequence_order": f"xattn.states instead; {_GEO}",
    "test_marking_at_projector_out_moves_exactly_that_sequence_position": f"xattn.states instead; {_GEO}",
    "test_signals_every_family_generation_equals_teacher_forcing": "refuses: grounding signals read image tokens",
    "test_logit_lens_last_layer_is_the_model_output": f"runs, its image map refuses; {_METHODS}",
    "test_grid_results_save_and_load": "its logit-lens image map refuses",
    "test_causal_trace_restoring_everything_recovers_clean": f"later cross-attention layers still read the corrupted "
                                                             f"keys: restoring the last layer, {_METHODS}",
    "test_causal_trace_forward_budget_and_batch_invariance": "column groups over image positions",
    "test_causal_trace_corrupting_with_another_image": "restores image positions",
    "test_knockout_batched_rows_equal_single_runs": f"blocks sequence edges to image tokens; {_METHODS}",
    "test_method_runs_on_every_family": f"pooled map at sequence image positions; {_METHODS}",
    "test_contrast_in_every_family": f"gradient summed over sequence image positions; {_METHODS}",
    "test_forward_logits_and_image_token_count": f"counts get_image_features rows; {_GEO}",
    "test_attention_capture_matches_eager_weights": f"stacks (N, N) self-attention; {_GEO}",
    "test_interventions": f"edits image positions of the sequence; xattn.states patching: {_GEO}",
    "test_panels_work_for_every_family": f"heads panel (head image share) refuses, lens has no image map; {_METHODS}",
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        reason = KEY_SPACE_SKIPS.get(item.originalname)
        if params.get("family") == "mllama" and reason:
            item.add_marker(pytest.mark.skip(reason=f"mllama images are cross-attention keys: {reason}"))
