"""ollama: a GGUF file plus a Modelfile, ready for `ollama create NAME -f Modelfile`.

ollama does not run the Jinja chat template stored in the GGUF; it renders prompts with its own
Go `text/template` from the Modelfile's TEMPLATE. `OLLAMA_TEMPLATE` below writes the same
ChatML text as minimind's template (see minimind/tokenizer.py):

    <|im_start|>system\\n{system}\\n\\n# Tools\\n<tools>\\n{tool}\\n</tools><|im_end|>\\n
    <|im_start|>user\\n{content}<|im_end|>\\n
    <|im_start|>assistant\\n<think>\\n\\n</think>\\n\\n{content}\\n<tool_call>\\n{call}\\n</tool_call><|im_end|>\\n
    <|im_start|>tool\\n<tool_response>\\n{content}\\n</tool_response><|im_end|>\\n
    <|im_start|>assistant\\n<think>\\n\\n</think>\\n\\n          <- the reply starts here

The reply always starts after the empty think block, so the model answers directly (minimind's
default; `minimind chat --think on` is the way to let it think first). Past assistant turns are
shown with the empty block too, as minimind renders turns without reasoning. One difference is
cosmetic: Go prints tool schemas and call arguments as compact JSON ({"a":1}) where minimind
writes {"a": 1}.

Generation stops at <|im_end|> (end of turn) and <|endoftext|> (end of document).
"""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError

# `{{-` / `-}}` trim the template's own line breaks; every other character is output verbatim.
# System messages reach the template as .System (ollama folds them there), so the loop skips them.
OLLAMA_TEMPLATE = """\
{{- if or .System .Tools }}<|im_start|>system
{{ if .System }}{{ .System }}{{ if .Tools }}

{{ end }}{{ end }}
{{- if .Tools }}# Tools
<tools>
{{- range .Tools }}
{{ json .Function }}
{{- end }}
</tools>
{{- end }}<|im_end|>
{{ end }}
{{- range .Messages }}
{{- if eq .Role "user" }}<|im_start|>user
{{ .Content }}<|im_end|>
{{ else if eq .Role "assistant" }}<|im_start|>assistant
<think>

</think>

{{ .Content }}
{{- $content := .Content }}
{{- range $i, $call := .ToolCalls }}
{{- if or $content $i }}
{{ end }}<tool_call>
{"name": "{{ $call.Function.Name }}", "arguments": {{ $call.Function.Arguments }}}
</tool_call>
{{- end }}<|im_end|>
{{ else if eq .Role "tool" }}<|im_start|>tool
<tool_response>
{{ .Content }}
</tool_response><|im_end|>
{{ end }}
{{- end }}<|im_start|>assistant
<think>

</think>

"""

STOP_TOKENS = ("<|im_end|>", "<|endoftext|>")


def modelfile_text(gguf_name: str, temperature: float = 0.7, top_p: float = 0.9,
                   system: str | None = None) -> str:
    """The Modelfile: FROM the GGUF next to it, the chat template, stop tokens and sampling."""
    if '"""' in (system or ""):
        raise UserError('export ollama: --system must not contain """ (the Modelfile quote)', param="system")
    lines = [f"FROM ./{gguf_name}", f'TEMPLATE """{OLLAMA_TEMPLATE}"""']
    if system:
        lines.append(f'SYSTEM """{system}"""')
    lines += [f'PARAMETER stop "{s}"' for s in STOP_TOKENS]
    lines += [f"PARAMETER temperature {temperature:g}", f"PARAMETER top_p {top_p:g}"]
    return "\n".join(lines) + "\n"


def export_ollama(checkpoint, out_dir, dtype: str = "f16", temperature: float = 0.7,
                  top_p: float = 0.9, system: str | None = None) -> Path:
    """Write OUT_DIR/model.gguf and OUT_DIR/Modelfile; returns the Modelfile's path."""
    from .gguf import export_gguf

    if not 0 <= temperature <= 2:
        raise UserError(f"export ollama: --temperature must be in [0, 2], got {temperature}", param="temperature")
    if not 0 < top_p <= 1:
        raise UserError(f"export ollama: --top-p must be in (0, 1], got {top_p}", param="top_p")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a directory; choose another output directory")
    text = modelfile_text("model.gguf", temperature, top_p, system)  # validate before the slow part
    export_gguf(checkpoint, out / "model.gguf", dtype=dtype)
    modelfile = out / "Modelfile"
    modelfile.write_text(text, encoding="utf-8")
    return modelfile
