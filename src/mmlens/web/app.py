"""The page: tabs Ask / Explain, Inside, Export, wired to the panel modules (which hold the API calls)."""

from __future__ import annotations

from typing import Any

import gradio as gr

from mmlens.web import ask, explain, export, heads, knockout, lens, trace, video
from mmlens.web.render import esc, message, result_grid_html
from mmlens.web.session import Context, Session, guard

SESSION_TTL = 2 * 3600
OPACITY_JS = "(v) => { document.documentElement.style.setProperty('--mm-opacity', v); return []; }"


def theme() -> Any:
    # local font stacks only: the page loads nothing from outside the server
    return gr.themes.Soft(primary_hue="indigo", font=["system-ui", "sans-serif"],
                          font_mono=["ui-monospace", "monospace"])


def build(ctx: Context) -> gr.Blocks:
    """The Blocks app for the loaded model in ``ctx``."""
    lm = ctx.subject
    methods = explain.attribution_methods()
    options = [o for m in methods for o in explain.method_options(m)]
    # a session's state and files are dropped after SESSION_TTL idle seconds (bounded memory on a long run)
    with gr.Blocks(title="mmlens", delete_cache=(SESSION_TTL, SESSION_TTL), analytics_enabled=False) as page:
        state = gr.State(Session(), time_to_live=SESSION_TTL)
        gr.HTML(f'<div class="mm-head"><h2 style="margin:0">mmlens</h2><span class="mm-sub">model '
                f'<b>{esc(lm.model_id)}</b> · {esc(lm.family)} · {lm.n_layers} layers</span></div>')
        with gr.Tabs():
            with gr.Tab("Ask / Explain", id="ask"):
                with gr.Row(equal_height=False):
                    with gr.Column(scale=2, min_width=300):
                        gallery = None
                        if ctx.is_demo:
                            gallery = gr.Gallery(ask.gallery_items(), label="ShapesVQA samples: click one",
                                                 columns=4, height=230, allow_preview=False, elem_id="samples")
                        upload = ask.upload_box(ctx)
                        preview = gr.Image(label="image", interactive=False, height=220, elem_id="preview",
                                           buttons=[])
                        fps = ask.fps_box(ctx)
                        prompt = gr.Textbox(label="prompt", placeholder="ask about the image", elem_id="prompt",
                                            max_length=10_000)
                        with gr.Accordion("teacher-force an answer (optional)", open=False):
                            forced = gr.Textbox(label="answer", elem_id="forced",
                                                placeholder="leave empty to explain the model's own answer")
                        gen_btn = gr.Button("Generate", variant="primary", elem_id="generate")
                        ask_msg = gr.HTML(elem_id="ask-msg")
                        chips = gr.CheckboxGroup([], label="answer tokens: click one, or adjacent ones for a span",
                                                 elem_id="answer-tokens")
                        target = gr.Textbox(label="target", value="answer", elem_id="target",
                                            info="a word or phrase of the answer, 'answer', or a contrast 'red - blue'")
                    with gr.Column(scale=3, min_width=360):
                        method = gr.Dropdown([(explain.method_label(m), m.name) for m in methods],
                                             value=explain.DEFAULT_METHOD, label="method  (name · survey leaf · "
                                             "access tier)", elem_id="method", filterable=True)
                        method_info = gr.HTML(explain.method_html(ctx, explain.DEFAULT_METHOD), elem_id="method-info")
                        groups, widgets = {}, []
                        with gr.Accordion("options", open=False, elem_id="options"):
                            for m in methods:
                                with gr.Group(visible=m.name == explain.DEFAULT_METHOD) as g:
                                    for o in options:
                                        if o.method == m.name:
                                            widgets.append(explain.widget(o))
                                groups[m.name] = g
                        with gr.Row():
                            ex_btn = gr.Button("Explain", variant="primary", elem_id="explain")
                            ex_stop = gr.Button("Cancel", variant="stop", elem_id="explain-cancel", scale=0)
                        ex_msg = gr.HTML(elem_id="explain-msg")
                        heat = gr.HTML(elem_id="heatmap")
                        opacity = gr.Slider(0.0, 1.0, value=0.6, step=0.05, label="heatmap opacity",
                                            elem_id="opacity")
                        tokens = gr.HTML(elem_id="prompt-scores")
            with gr.Tab("Inside", id="inside"):
                in_msg = gr.HTML(elem_id="inside-msg")
                with gr.Accordion("Logit lens", open=True):
                    with gr.Row():
                        lens_word = gr.Textbox(label="word to track (default: the first answer token)",
                                               elem_id="lens-word")
                        lens_layer = gr.Slider(0, max(lm.n_layers - 1, 1), value=lm.n_layers - 1, step=1,
                                               label="layer of the image map", elem_id="lens-layer")
                        lens_btn = gr.Button("Run logit lens", variant="primary", elem_id="lens-run", scale=0)
                    lens_sum = gr.HTML(elem_id="lens-summary-box")
                    with gr.Row():
                        lens_map = gr.HTML(elem_id="lens-map")
                    lens_table = gr.HTML(elem_id="lens-table")
                lens_state = gr.State(None, time_to_live=SESSION_TTL)
                with gr.Accordion("Causal tracing", open=False):
                    with gr.Row():
                        tr_comp = gr.Radio(["resid", "attn", "mlp"], value="resid", label="component")
                        tr_noise = gr.Number(3.0, label="noise scale (x std of image embeddings)")
                        tr_btn = gr.Button("Run causal trace", variant="primary", elem_id="trace-run", scale=0)
                        tr_stop = gr.Button("Cancel", variant="stop", scale=0)
                    tr_out = gr.HTML(elem_id="trace-grid")
                with gr.Accordion("Attention knockout", open=False):
                    with gr.Row():
                        ko_window = gr.Number(0, label="layers per window (0: all layers at once)", precision=0,
                                              minimum=0)
                        ko_btn = gr.Button("Run knockout", variant="primary", elem_id="knockout-run", scale=0)
                        ko_stop = gr.Button("Cancel", variant="stop", scale=0)
                    ko_out = gr.HTML(elem_id="knockout-grid")
                with gr.Accordion("Heads: attention share on the image", open=False):
                    hd_btn = gr.Button("Run head shares", variant="primary", elem_id="heads-run")
                    hd_out = gr.HTML(elem_id="heads-grid")
            with gr.Tab("Export", id="export"):
                with gr.Row():
                    fmt = gr.Radio(list(export.FORMATS), value="HTML report", label="format", elem_id="format")
                    save_btn = gr.Button("Save current view", variant="primary", elem_id="save", scale=0)
                exp_msg = gr.HTML(elem_id="export-msg")
                exp_file = gr.File(label="download", elem_id="download", interactive=False)
                snippet = gr.Code(export.code(ctx, Session()), language="python", label="copy as code",
                                  elem_id="snippet", interactive=False)

        # -- Ask ------------------------------------------------------------------------------------------
        reset = [chips, target, heat, tokens, ask_msg, ex_msg]

        def cleared(s: Session, note: str = "") -> dict:
            return {state: s, preview: gr.update(value=s.image, label=ask.preview_label(s)), prompt: s.prompt,
                    chips: gr.update(choices=[], value=[]),
                    target: "answer", heat: "", tokens: "", ask_msg: note, ex_msg: ""}

        if gallery is not None:
            @guard(ask_msg, lm.model)
            def on_sample(s: Session, evt: gr.SelectData) -> dict:
                new, _, _ = ask.load_sample(ctx, s, evt.index)
                return cleared(new, message(f"loaded {new.image_name}: press Generate", "info"))

            gallery.select(on_sample, [state], [state, preview, prompt, *reset])

        @guard(ask_msg, lm.model)
        def load_upload(s: Session, paths: list[str] | None, rate: float | None) -> dict:
            new = ask.load_upload(ctx, s, paths, rate)
            return cleared(new, ask.loaded_note(new))

        def on_upload(s: Session, paths: list[str] | None, rate: float | None) -> dict:
            # the drop zone is emptied again at once: the image shows in the preview, the file is not kept
            return {**load_upload(s, paths, rate), upload: None}

        upload.upload(on_upload, [state, upload, fps], [state, preview, prompt, upload, *reset], api_name="upload")

        @guard(ask_msg, lm.model)
        def on_fps(s: Session, rate: float | None, text: str) -> dict:
            new = video.with_fps(s, rate)
            if new is s:  # no video yet, or the same rate: nothing to do
                return {}
            new.prompt = text or ""
            return cleared(new, ask.loaded_note(new))

        fps.submit(on_fps, [state, fps, prompt], [state, preview, prompt, *reset])
        fps.blur(on_fps, [state, fps, prompt], [state, preview, prompt, *reset])

        @guard(ask_msg, lm.model)
        def on_generate(s: Session, text: str, forced_text: str) -> dict:
            new = ask.generate(ctx, s, text, forced_text)
            return {state: new, chips: gr.update(choices=ask.chip_choices(new), value=[]), target: "answer",
                    ask_msg: ask.answer_note(new), heat: "", tokens: "", ex_msg: ""}

        gen_btn.click(on_generate, [state, prompt, forced], [state, chips, target, ask_msg, heat, tokens, ex_msg],
                      concurrency_id="model", api_name="generate")
        prompt.submit(on_generate, [state, prompt, forced], [state, chips, target, ask_msg, heat, tokens, ex_msg],
                      concurrency_id="model")

        @guard(ask_msg, lm.model)
        def on_chips(s: Session, picked: list[int]) -> dict:
            return {target: ask.span_target(s, picked), ask_msg: ""}

        chips.input(on_chips, [state, chips], [target, ask_msg])

        # -- Explain --------------------------------------------------------------------------------------
        def on_method(name: str) -> dict:
            return {method_info: explain.method_html(ctx, name),
                    **{g: gr.update(visible=m == name) for m, g in groups.items()}}

        method.change(on_method, [method], [method_info, *groups.values()])

        @guard(ex_msg, lm.model)
        def on_explain(s: Session, name: str, tgt: str, alpha: float, progress: gr.Progress = gr.Progress(),
                       *values: Any) -> dict:  # progress before *values: Gradio inserts it by position
            opts = explain.chosen_options(name, options, list(values))
            s, heat_html, tok_html = explain.run(ctx, s, name, tgt, opts, alpha, progress)
            return {state: s, heat: heat_html, tokens: tok_html, ex_msg: "", snippet: export.code(ctx, s)}

        ex_event = ex_btn.click(on_explain, [state, method, target, opacity, *widgets],
                                [state, heat, tokens, ex_msg, snippet], concurrency_id="model", api_name="explain")
        ex_stop.click(None, None, None, cancels=[ex_event])
        opacity.input(None, [opacity], None, js=OPACITY_JS)

        # -- Inside ---------------------------------------------------------------------------------------
        @guard(in_msg, lm.model)
        def on_lens(s: Session, word: str, layer: float, progress: gr.Progress = gr.Progress()) -> dict:
            progress(0.1, desc="logit lens")
            result = lens.run(ctx, s, word)
            return {lens_state: result, lens_sum: lens.summary_html(s, result), lens_table: lens.table_html(s, result),
                    lens_map: lens.image_map_html(s, result, int(layer)), in_msg: ""}

        lens_btn.click(on_lens, [state, lens_word, lens_layer], [lens_state, lens_sum, lens_table, lens_map, in_msg],
                       concurrency_id="model", api_name="logit_lens")

        @guard(in_msg, lm.model)
        def on_layer(s: Session, result: Any, layer: float) -> dict:
            if result is None:
                return {}
            return {lens_map: lens.image_map_html(s, result, int(layer))}

        lens_layer.release(on_layer, [state, lens_state, lens_layer], [lens_map, in_msg])

        @guard(in_msg, lm.model)
        def on_trace(s: Session, comp: str, noise: float, progress: gr.Progress = gr.Progress()) -> dict:
            progress(0.05, desc="causal trace: one corrupted run per (layer, position)")
            return {tr_out: result_grid_html(trace.run(ctx, s, comp, noise)), in_msg: ""}

        tr_event = tr_btn.click(on_trace, [state, tr_comp, tr_noise], [tr_out, in_msg], concurrency_id="model")
        tr_stop.click(None, None, None, cancels=[tr_event])

        @guard(in_msg, lm.model)
        def on_knockout(s: Session, window: float | None, progress: gr.Progress = gr.Progress()) -> dict:
            progress(0.05, desc="attention knockout")
            return {ko_out: result_grid_html(knockout.run(ctx, s, window)), in_msg: ""}

        ko_event = ko_btn.click(on_knockout, [state, ko_window], [ko_out, in_msg], concurrency_id="model")
        ko_stop.click(None, None, None, cancels=[ko_event])

        @guard(in_msg, lm.model)
        def on_heads(s: Session) -> dict:
            return {hd_out: result_grid_html(heads.run(ctx, s)), in_msg: ""}

        hd_btn.click(on_heads, [state], [hd_out, in_msg], concurrency_id="model")

        # -- Export ---------------------------------------------------------------------------------------
        @guard(exp_msg, lm.model)
        def on_save(s: Session, f: str) -> dict:
            path = export.save(ctx, s, f)
            return {exp_file: path, exp_msg: message(f"saved {f}: click the file to download", "ok"),
                    snippet: export.code(ctx, s)}

        save_btn.click(on_save, [state, fmt], [exp_file, exp_msg, snippet], concurrency_id="model", api_name="export")
    return page
