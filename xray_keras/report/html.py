"""The report's Markdown lines as one self-contained HTML page (headings, tables, images, text)."""

import html
import re

_STYLE = (
  "body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
  "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px}"
  "img{max-width:100%}"
)


def _inline(text):
  text = html.escape(text, quote=False)
  text = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", text)
  return re.sub(r"`(.+?)`", r"<code>\1</code>", text)


def _cells(line):
  return [c.strip() for c in line.strip().strip("|").split("|")]


def render(lines):
  """HTML for the Markdown subset the report writes."""
  out, table = [], []

  def flush():
    if table:
      out.append("<table><tr>" + "".join(f"<th>{_inline(c)}</th>" for c in _cells(table[0])) + "</tr>")
      out.extend("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in _cells(row)) + "</tr>" for row in table[2:])
      out.append("</table>")
      table.clear()

  for line in "\n".join(lines).splitlines():
    if line.startswith("|"):
      table.append(line)
      continue
    flush()
    image = re.fullmatch(r"!\[(.*?)\]\((.+?)\)", line.strip())
    heading = re.match(r"(#+) (.*)", line)
    if image:
      out.append(f'<p><img alt="{html.escape(image[1])}" src="{html.escape(image[2])}"></p>')
    elif heading:
      level = len(heading[1])
      out.append(f"<h{level}>{_inline(heading[2])}</h{level}>")
    elif line.startswith("- "):
      out.append(f"<ul><li>{_inline(line[2:])}</li></ul>")
    elif line.strip():
      out.append(f"<p>{_inline(line)}</p>")
  flush()
  return out


def write(lines, path):
  body = "\n".join(render(lines))
  with open(path, "w", encoding="utf-8") as f:
    f.write(
      f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>xray_keras report</title>'
      f"<style>{_STYLE}</style></head><body>\n{body}\n</body></html>\n"
    )
