"""A local page to drop chest X-rays on and see what a model says, where it looked, and its model card.

  pip install 'xray_keras[demo]'
  python -m xray_keras.demo --model=runs/vit_scratch/<timestamp>        # a run: Grad-CAM or attention rollout
  python -m xray_keras.demo --model=exports/vit_scratch-onnx             # an export: no TensorFlow needed

The page listens on 127.0.0.1 (this computer only) unless --host says otherwise. It takes JPEG,
PNG and DICOM files and refuses what `xray_keras.predict` refuses, with the same reason.
"""

import html
import os
import sys

from absl import app, flags, logging

from xray_keras import path_flags
from xray_keras.errors import UserError
from xray_keras.serving.demo_model import UNLIKE_TRAINING

_MODEL = path_flags.DEFINE_path(
  "model", None, "A run folder (or its model.keras), or an export (folder, .onnx, .tflite, .xml).", required=True
)
_HOST = flags.DEFINE_string("host", "127.0.0.1", "Address to listen on; 0.0.0.0 opens the page to the network.")
_PORT = flags.DEFINE_integer("port", 7860, "Port of the page.", lower_bound=1, upper_bound=65535)
_OPERATING_POINT = flags.DEFINE_enum(
  "operating_point",
  "youden",
  ["youden", "sensitivity_95", "specificity_90"],
  "The operating point whose label the page names first (all of them are shown).",
)

_COLUMNS = ["file", "PNEUMONIA probability", "youden", "sensitivity_95", "specificity_90", "refused or flagged"]
# Each column's least width: a long refusal reason wraps in the last column and squeezes none of the others.
_MIN_WIDTH = ["12ch", "11ch", "10ch", "10ch", "10ch", "16ch"]
_CELL = "border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top;"


def rows(scored, unlike=UNLIKE_TRAINING):
  """The table: one row per file, labels per operating point, or why it was refused or flagged."""
  out = []
  for s in scored:
    p = "" if s.probability is None else f"{s.probability:.6f}"
    note = s.refused
    if s.flagged:
      note = f"flagged: {unlike} (OOD score {s.ood_score:.3g})"
    labels = ["flagged" if s.flagged else s.labels.get(rule, "") for rule in _COLUMNS[2:5]]
    out.append([s.name, p, *labels, note])
  return out


def table_html(table):
  """`rows` as an HTML table: the file name and the reason wrap anywhere, numbers and labels never."""
  if not table:
    return ""

  def cell(tag, i, text):
    wrap = "overflow-wrap:anywhere;" if i in (0, len(_COLUMNS) - 1) else "white-space:nowrap;"
    return (
      f'<{tag} title="{html.escape(text)}" style="{_CELL}{wrap}min-width:{_MIN_WIDTH[i]}">{html.escape(text)}</{tag}>'
    )

  head = "".join(cell("th", i, c) for i, c in enumerate(_COLUMNS))
  body = "".join("<tr>" + "".join(cell("td", i, str(v)) for i, v in enumerate(row)) + "</tr>" for row in table)
  return (
    f'<table style="border-collapse:collapse;width:100%"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'
  )


def summary(scored, operating_point, unlike=UNLIKE_TRAINING):
  """What the page says first: the probability and label of a single file, or counts for several."""
  if not scored:
    return ""
  if len(scored) == 1:
    s = scored[0]
    if s.refused:
      return f"**{s.name}** refused: {s.refused}"
    if s.flagged:
      return (
        f"**{s.name}**: PNEUMONIA probability {s.probability:.6f}, but **⚠ no label: this image is {unlike}** "
        f"(OOD score {s.ood_score:.3g}, above the card's threshold); do not trust the probability."
      )
    label = s.labels.get(operating_point) or next(iter(s.labels.values()))
    return f"**{s.name}**: PNEUMONIA probability **{s.probability:.6f}**, {label} at the {operating_point} threshold"
  refused, flagged = sum(1 for s in scored if s.refused), sum(1 for s in scored if s.flagged)
  also = f"; {flagged} of them flagged as {unlike}, without a label" if flagged else ""
  return f"{len(scored)} files: {len(scored) - refused} classified, {refused} refused{also} (table below)."


def build_page(model, operating_point="youden"):
  import gradio as gr

  def classify(files):
    paths = [f if isinstance(f, str) else f.name for f in files or []]
    scored = model.score(paths)
    overlay, caption = None, ""
    first = next((s for s in scored if not s.refused), None)
    if first is not None:
      try:
        overlay, method = model.overlay(first.path)
        caption = f"{first.name}: {method}"
      except Exception as e:  # noqa: BLE001  (the overlay is extra: its failure must not hide the probability)
        logging.warning("No overlay for %s: %s", first.name, e)
        caption = f"No overlay for {first.name}: {str(e).splitlines()[0]}"
    return (
      summary(scored, operating_point),
      table_html(rows(scored)),
      gr.update(value=overlay, label=caption or "Where it looked"),
    )

  with gr.Blocks(title="xray_keras: pneumonia on a chest X-ray") as page:
    gr.Markdown(
      "## Pneumonia on a chest X-ray\nDrop one or more JPEG, PNG or DICOM files. "
      f"**{model.card.get('model', {}).get('display_name', 'Model')}**, not a medical device: see the model card."
    )
    files = gr.File(label="Chest X-rays", file_count="multiple", elem_id="files")
    result = gr.Markdown(elem_id="result")
    table = gr.HTML(elem_id="table", js_on_load=None)
    gr.Markdown(model.about_markdown(), elem_id="about")
    with gr.Row():
      overlay = gr.Image(label="Where it looked", elem_id="overlay", interactive=False, height=360)
      with gr.Column():
        gr.Markdown(model.card_markdown(), elem_id="card")
    files.change(classify, files, [result, table, overlay])
  return page


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
  try:
    import gradio  # noqa: F401
  except ImportError:
    sys.exit("error: the demo page needs Gradio: pip install 'xray_keras[demo]'")
  from xray_keras.serving.demo_model import DemoModel

  try:
    model = DemoModel(_MODEL.value, _OPERATING_POINT.value)
  except UserError as e:
    sys.exit(f"error: {e}")
  except (OSError, ValueError) as e:
    sys.exit(f"error: cannot load --model={_MODEL.value}: {str(e).splitlines()[0]}")
  if _HOST.value not in ("127.0.0.1", "localhost", "::1"):
    logging.warning("The page listens on %s: anyone who can reach this computer can use it.", _HOST.value)
  build_page(model, _OPERATING_POINT.value).launch(server_name=_HOST.value, server_port=_PORT.value, share=False)


if __name__ == "__main__":
  app.run(main)
