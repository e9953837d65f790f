"""Byte-level BPE tokenizer and the chat template (with loss masks) for minimind.

Two jobs live here because they must agree with each other exactly:

1. **The tokenizer.** A byte-level BPE (the GPT-2 recipe, via the Rust `tokenizers` library,
   with Qwen2's pre-tokenizer split refined so digits and Chinese characters stay single pieces
   and a cap on token length): text is split into bytes, so any string -- Chinese, emoji, code -- can be encoded with no
   unknown token, and frequent byte sequences are merged into single tokens. 6,400 tokens is
   the MiniMind size: a tiny vocabulary keeps the embedding table small (6400 x 512 is 3.3M of
   the 26M parameters) at the price of more tokens per sentence. The first 16 ids are fixed:

       0 <|endoftext|>   document separator in pretraining, and the padding id
       1 <|im_start|>    opens a chat turn ("bos" for chat)
       2 <|im_end|>      closes a chat turn: generation stops here ("eos")
       3 <think>  4 </think>  5 <tool_call>  6 </tool_call>  7 <tool_response>  8 </tool_response>
       9..15 <|reserved_0|> .. <|reserved_6|>   spare ids for later use

   The think / tool tags are "added tokens" that are not special: they always encode as one id
   when they appear in text, and `decode(..., skip_special_tokens=True)` keeps them, because
   they are part of what the model says.

2. **The chat template.** A conversation (OpenAI-style list of messages) becomes one string in
   the MiniMind-3 / Qwen3 ChatML convention::

       <|im_start|>system\\n{system content}\\n\\n# Tools\\n<tools>\\n{tool}\\n{tool}\\n</tools><|im_end|>\\n
       <|im_start|>user\\n{content}<|im_end|>\\n
       <|im_start|>assistant\\n<think>\\n{reasoning}\\n</think>\\n\\n{content}\\n<tool_call>\\n{call}\\n</tool_call><|im_end|>\\n
       <|im_start|>tool\\n<tool_response>\\n{content}\\n</tool_response><|im_end|>\\n

   The template exists twice: as the Jinja string `CHAT_TEMPLATE` (saved in
   tokenizer_config.json, so `transformers`, vLLM and friends render the same text) and as the
   Python function `render_chat_text`, which is faster, validates its input with readable
   errors, and also returns which characters the model is trained on. Tests check that both
   produce identical text and ids. Rules of the template:

   - **Tools** come from the `tools` argument, or else from a `tools` field on the first
     (system) message, as MiniMind data stores them. Either may be a list or a JSON string.
     Each tool is written as one compact JSON line (`{"type": "function", "function": X}` is
     unwrapped to X: the model has a short context). The block goes at the end of the system
     message after a blank line; with tools but no system message, a system message holding
     only the tools block is added.
   - **Tool calls** (`tool_calls` on an assistant message) may be a list or a JSON string; each
     call may be `{"name", "arguments"}` or OpenAI's `{"type": "function", "function": {...}}`,
     and `arguments` a dict or a JSON string. All forms render the same canonical JSON
     `{"name": ..., "arguments": {...}}` (`json.dumps(..., ensure_ascii=False)`), one
     `<tool_call>` block each, separated from the content (and each other) by a newline.
   - **Reasoning**: an assistant turn shows `<think>\\n{reasoning}\\n</think>\\n\\n` before its
     content, taking the reasoning from `reasoning_content` or, failing that, from a
     `...</think>` prefix of the content. A turn without reasoning gets the empty block
     `<think>\\n\\n</think>\\n\\n`, so the model always learns to close its thinking.
     Reasoning of earlier turns is kept everywhere (simplest, and training and inference then
     see the same text).
   - **Generation prompt**: `add_generation_prompt=True` appends `<|im_start|>assistant\\n` and
     then `<think>\\n` when `open_thinking=True` (the model thinks first) or the empty block
     `<think>\\n\\n</think>\\n\\n` when False, the default (the model answers directly). The
     Jinja template also accepts `enable_thinking`, the name OpenAI-compatible servers pass.
   - **Loss mask**: for every assistant turn, everything after its `<|im_start|>assistant\\n`
     header up to and including its `<|im_end|>` is trained; the header, the newline after
     `<|im_end|>` and all system / user / tool text are not.
   - **Message text is text**: only the template writes control tokens. A message that contains
     `<|im_end|>\\n<|im_start|>system` must not forge a turn, so text supplied by the caller
     (message content, reasoning, tools, tool calls) never encodes to a special token (the turn
     markers, `<|endoftext|>`, the reserved ids): those characters are encoded as plain text. The
     think / tool tags are not special (the model's own markup, and harmless inside a turn that
     the markers delimit) and keep their ids. Conversations without such text keep exactly the
     ids of a plain encode of the rendered string (checked first; only a conversation where caller
     text matched a special token is re-encoded piece by piece).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Iterable, Iterator

from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers, trainers
from tokenizers import Tokenizer as _RustTokenizer

from minimind.errors import UserError

# ---------------------------------------------------------------------------------------------
# Special tokens
# ---------------------------------------------------------------------------------------------

ENDOFTEXT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
THINK, END_THINK = "<think>", "</think>"
TOOL_CALL, END_TOOL_CALL = "<tool_call>", "</tool_call>"
TOOL_RESPONSE, END_TOOL_RESPONSE = "<tool_response>", "</tool_response>"
TAG_TOKENS = [THINK, END_THINK, TOOL_CALL, END_TOOL_CALL, TOOL_RESPONSE, END_TOOL_RESPONSE]
RESERVED_TOKENS = [f"<|reserved_{i}|>" for i in range(7)]
# The list order is the id order: the trainer gives these ids 0..15.
SPECIAL_TOKENS = [ENDOFTEXT, IM_START, IM_END, *TAG_TOKENS, *RESERVED_TOKENS]

DEFAULT_VOCAB_SIZE = 6400
DEFAULT_MODEL_MAX_LENGTH = 32768
TOKENIZER_FILE = "tokenizer.json"
CONFIG_FILE = "tokenizer_config.json"
ROLES = ("system", "user", "assistant", "tool")


def _added_token(content: str) -> AddedToken:
    # normalized=False: match the raw text. special=False for the tags, so decode keeps them.
    return AddedToken(content, special=content not in TAG_TOKENS, normalized=False)


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------


def _messages_text(messages: object) -> list[str]:
    """All the text of a conversation that the model will read: contents, reasoning, tool JSON."""
    parts = []
    for message in messages if isinstance(messages, list) else []:
        if not isinstance(message, dict):
            continue
        for key in ("content", "reasoning_content", "tools", "tool_calls"):
            value = message.get(key)
            if isinstance(value, str):
                parts.append(value)
            elif isinstance(value, (list, dict)):
                parts.append(json.dumps(value, ensure_ascii=False))
    return parts


def _record_text(record: object, where: str) -> str:
    """The training text of one JSONL record: pretraining, SFT or DPO format."""
    if not isinstance(record, dict):
        raise UserError(f"{where}: expected a JSON object, got {type(record).__name__}")
    if "text" in record:
        if not isinstance(record["text"], str):
            raise UserError(f"{where}: field 'text' must be a string")
        return record["text"]
    if "conversations" in record:
        return "\n".join(_messages_text(record["conversations"]))
    if "chosen" in record:
        return "\n".join(_messages_text(record["chosen"]) + _messages_text(record.get("rejected")))
    raise UserError(f"{where}: record has none of the fields 'text', 'conversations', 'chosen'")


def _iter_texts(paths: list[Path], max_docs: int | None) -> Iterator[str]:
    """Stream documents from JSONL files line by line (files may be many GB)."""
    n = 0
    for path in paths:
        with open(path, "rb") as f:
            for lineno, raw in enumerate(f, 1):
                if max_docs is not None and n >= max_docs:
                    return
                where = f"{path}:{lineno}"
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise UserError(f"{where}: not valid UTF-8 ({e.reason}); fix or remove the line")
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    raise UserError(f"{where}: invalid JSON ({e.msg} at column {e.colno}); fix or remove the line")
                text = _record_text(record, where)
                if text:
                    n += 1
                    yield text


def _count_lines(paths: list[Path], cap: int | None) -> int:
    """Line count for the progress bar: a fast binary pass, much cheaper than parsing."""
    total = 0
    for path in paths:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                total += chunk.count(b"\n")
        if cap is not None and total >= cap:
            return cap
    return total


# The pre-tokenizer split: Qwen2's (llama.cpp knows it as the "qwen2" pre-tokenizer) with two
# changes for Chinese. As in Qwen2's (not GPT-2's), every digit is its own piece, so numbers are
# spelled digit by digit -- a tiny model can then learn column arithmetic instead of memorising a token per number.
# Unlike Qwen2's, (1) only a space joins the letters after it (Qwen2 joins any one punctuation mark),
# and (2) every Han character is a piece of its own. Chinese has no spaces: under Qwen2's split
# "。铝的原子序数是13。" is one piece after "。", BPE learns "。铝" and "铝的" as tokens, and the same
# element is three different tokens at a sentence start, after a colon and at the start of a
# question -- a small model then learns its facts three times over and answers Chinese questions
# far worse than English ones (held-out facts 11-20% against 60-74%; 68-70% with this split,
# bench/RESULTS.md "2026-12-01: one token for one Chinese character"). Both changes only cut
# Qwen2's pieces finer, and BPE never merges across a cut it trained with, so llama.cpp's "qwen2"
# pre-tokenizer reproduces this tokenizer's ids exactly (tests/test_tokenizer.py checks it).
PRETOKENIZE_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|\p{Han}| ?(?:(?!\p{Han})\p{L})+|\p{N}"
                     r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
# Qwen2's own split, which the GGUF export names ("qwen2") and tokenizers trained before the change
# above still carry in their tokenizer.json.
QWEN2_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
               r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
# Longest token, in bytes: an 8-letter English piece. (It once kept a small corpus from merging
# whole Chinese phrases into one token; the split above now keeps Chinese to one character a token.)
MAX_TOKEN_BYTES = 8


def pre_tokenizer(regex: str | None = None) -> pre_tokenizers.PreTokenizer:
    """Split by `regex` (PRETOKENIZE_REGEX unless given: digits apart, words with their leading
    space), then map to bytes: every string is representable, no unknown token. No prefix space,
    so "Hello" at the start of a message and after a newline are the same token."""
    return pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(regex or PRETOKENIZE_REGEX), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])


def _new_backend() -> _RustTokenizer:
    backend = _RustTokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizer()
    backend.decoder = decoders.ByteLevel()
    return backend


def train_tokenizer(
    files: list[str | Path],
    out_dir: str | Path,
    vocab_size: int = DEFAULT_VOCAB_SIZE,
    max_docs: int | None = None,
    progress: bool = True,
) -> "Tokenizer":
    """Train a byte-level BPE tokenizer on JSONL files, save it to `out_dir` and return it.

    Records may be pretraining (`{"text"}`), SFT (`{"conversations"}`: all contents, reasoning
    and tool JSON) or DPO (`{"chosen", "rejected"}`). At most `max_docs` documents are read.
    """
    paths = [Path(f) for f in files]
    if not paths:
        raise UserError("train_tokenizer: no input files given")
    for path in paths:
        if not path.is_file():
            raise UserError(f"{path}: file not found")
    smallest = 256 + len(SPECIAL_TOKENS) + 1
    if vocab_size < smallest:
        raise UserError(f"vocab_size={vocab_size}: too small; it needs at least {smallest} "
                        f"(256 byte tokens + {len(SPECIAL_TOKENS)} special tokens + 1 merge)")
    backend = _new_backend()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[_added_token(t) for t in SPECIAL_TOKENS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes, even if unseen
        max_token_length=MAX_TOKEN_BYTES,
        show_progress=progress,
    )
    length = _count_lines(paths, max_docs) if progress else None
    read = [0]

    def texts():
        for t in _iter_texts(paths, max_docs):
            read[0] += 1
            yield t

    backend.train_from_iterator(texts(), trainer, length=length)
    if not read[0]:
        raise UserError(f"{', '.join(map(str, paths))}: no text to learn from (empty files, or --max-docs 0); "
                        f"give JSONL with text, conversations or chosen/rejected records")
    # The trainer registers every special token as special; re-adding the tags updates them to
    # special=False. A serialization round trip makes decode see the change.
    backend.add_tokens([_added_token(t) for t in TAG_TOKENS])
    tokenizer = Tokenizer(_RustTokenizer.from_str(backend.to_str()))
    tokenizer.save(out_dir)
    if progress and tokenizer.vocab_size < vocab_size:
        print(f"note: the corpus supports only {tokenizer.vocab_size} tokens (asked for {vocab_size}); "
              f"more (or more varied) text gives more merges")
    return Tokenizer.load(out_dir)


# ---------------------------------------------------------------------------------------------
# The tokenizer wrapper
# ---------------------------------------------------------------------------------------------


class Tokenizer:
    """A thin wrapper around `tokenizers.Tokenizer` with minimind's ids and file layout."""

    def __init__(self, backend: _RustTokenizer, where: str = "tokenizer"):
        self.backend = backend
        self._added: dict[int, str] | None = None
        for token in (ENDOFTEXT, IM_START, IM_END):
            if backend.token_to_id(token) is None:
                raise UserError(f"{where}: the tokenizer has no {token} token; "
                                "use a tokenizer trained by minimind (or a MiniMind one)")

    # -- files -----------------------------------------------------------------------------

    @classmethod
    def load(cls, path: str | Path) -> "Tokenizer":
        """Load from a directory holding tokenizer.json (or from the tokenizer.json file itself)."""
        path = Path(path)
        file = path if path.suffix == ".json" else path / TOKENIZER_FILE
        if not file.is_file():
            raise UserError(f"{file}: not found; train a tokenizer first or point to a "
                            "directory that holds tokenizer.json")
        try:
            backend = _RustTokenizer.from_file(str(file))
        except Exception as e:  # the Rust side raises plain Exception with a message
            raise UserError(f"{file}: not a valid tokenizer file ({str(e).splitlines()[0]})")
        config = file.parent / CONFIG_FILE
        if config.is_file():
            try:
                json.loads(config.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise UserError(f"{config}: corrupt JSON ({e}); delete it and save the tokenizer again")
        return cls(backend, where=str(file))

    def save(self, out_dir: str | Path, model_max_length: int = DEFAULT_MODEL_MAX_LENGTH) -> None:
        """Write tokenizer.json + tokenizer_config.json, loadable by `AutoTokenizer.from_pretrained`."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        self.backend.save(str(out_dir / TOKENIZER_FILE))
        config = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": IM_START,
            "eos_token": IM_END,
            "pad_token": ENDOFTEXT,
            "unk_token": None,
            "add_bos_token": False,
            "add_eos_token": False,
            "add_prefix_space": False,
            "clean_up_tokenization_spaces": False,
            "split_special_tokens": False,
            "model_max_length": model_max_length,
            "added_tokens_decoder": {
                str(i): {"content": t.content, "lstrip": t.lstrip, "normalized": t.normalized,
                         "rstrip": t.rstrip, "single_word": t.single_word, "special": t.special}
                for i, t in sorted(self.backend.get_added_tokens_decoder().items())
            },
            "chat_template": CHAT_TEMPLATE,
        }
        text = json.dumps(config, ensure_ascii=False, indent=2)
        (out_dir / CONFIG_FILE).write_text(text + "\n", encoding="utf-8")

    def fingerprint(self) -> str:
        """Short stable hash of tokenizer.json: prepared data and checkpoints record it."""
        return hashlib.sha256(self.backend.to_str().encode("utf-8")).hexdigest()[:16]

    # -- ids -------------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    @property
    def pad_id(self) -> int:
        return self.backend.token_to_id(ENDOFTEXT)

    @property
    def eot_id(self) -> int:
        """Document separator for pretraining (same id as padding)."""
        return self.backend.token_to_id(ENDOFTEXT)

    @property
    def eos_id(self) -> int:
        """End of a chat turn: generation stops here."""
        return self.backend.token_to_id(IM_END)

    @property
    def im_start_id(self) -> int:
        return self.backend.token_to_id(IM_START)

    @property
    def im_end_id(self) -> int:
        return self.backend.token_to_id(IM_END)

    # The tag ids are None for a tokenizer without these tokens (e.g. an old MiniMind one).
    @property
    def think_id(self) -> int | None:
        return self.backend.token_to_id(THINK)

    @property
    def end_think_id(self) -> int | None:
        return self.backend.token_to_id(END_THINK)

    @property
    def tool_call_id(self) -> int | None:
        return self.backend.token_to_id(TOOL_CALL)

    @property
    def end_tool_call_id(self) -> int | None:
        return self.backend.token_to_id(END_TOOL_CALL)

    def __len__(self) -> int:
        return self.vocab_size

    # -- text <-> ids ----------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        return self.backend.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Encode many texts at once; the Rust side spreads the work over all cores.

        Uses `encode_batch_fast` (same ids, no character offsets computed) where tokenizers has it.
        """
        fast = getattr(self.backend, "encode_batch_fast", None) or self.backend.encode_batch
        return [e.ids for e in fast(list(texts), add_special_tokens=False)]

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def added_tokens(self) -> dict[int, str]:
        """id -> text of the added tokens (the 16 special and tag tokens)."""
        if self._added is None:
            self._added = {i: t.content for i, t in self.backend.get_added_tokens_decoder().items()}
        return self._added

    def id_to_token(self, token_id: int) -> str | None:
        return self.backend.id_to_token(token_id)

    def token_to_id(self, token: str) -> int | None:
        return self.backend.token_to_id(token)


# ---------------------------------------------------------------------------------------------
# The chat template, in Jinja
# ---------------------------------------------------------------------------------------------

# Every tag trims the template's own whitespace ({%- -%}), so only the quoted strings reach the
# output. `json_load` exists because Jinja has no json.loads, yet MiniMind data stores tools,
# tool_calls and arguments as JSON strings: it reads one (already valid) JSON text with a
# bracket stack, one character at a time, so that strings and lists render identically.
CHAT_TEMPLATE = r"""
{%- macro json_put(st, value) -%}
    {%- if st.stack | length == 0 -%}
        {%- set st.value = value -%}
    {%- else -%}
        {%- set top = st.stack[-1] -%}
        {%- if not top.is_object -%}
            {%- set top.acc = top.acc + [value] -%}
        {%- elif top.key is none -%}
            {%- set top.key = value -%}
        {%- else -%}
            {%- set top.acc = dict(top.acc, **{top.key: value}) -%}
            {%- set top.key = none -%}
        {%- endif -%}
    {%- endif -%}
{%- endmacro -%}
{%- macro json_flush_high(st) -%}
    {%- if st.high is not none -%}
        {%- set st.str = st.str ~ '%c' | format(st.high) -%}
        {%- set st.high = none -%}
    {%- endif -%}
{%- endmacro -%}
{%- macro json_load(text, out) -%}
    {%- set st = namespace(stack=[], value=none, str=none, esc=false, hex=none, high=none, word='') -%}
    {%- for ch in text ~ ' ' -%}
        {%- if st.str is none -%}
            {%- if st.word and ch in ' \t\n\r,:]}' -%}
                {%- if st.word == 'true' -%}{{- json_put(st, true) -}}
                {%- elif st.word == 'false' -%}{{- json_put(st, false) -}}
                {%- elif st.word == 'null' -%}{{- json_put(st, none) -}}
                {%- elif '.' in st.word or 'e' in st.word or 'E' in st.word or 'N' in st.word or 'I' in st.word -%}
                    {{- json_put(st, st.word | float) -}}
                {%- else -%}{{- json_put(st, st.word | int) -}}
                {%- endif -%}
                {%- set st.word = '' -%}
            {%- endif -%}
            {%- if ch == '"' -%}
                {%- set st.str = '' -%}
            {%- elif ch == '{' or ch == '[' -%}
                {%- set st.stack = st.stack + [namespace(acc={} if ch == '{' else [], is_object=ch == '{', key=none)] -%}
            {%- elif ch == '}' or ch == ']' -%}
                {%- set top = st.stack[-1] -%}
                {%- set st.stack = st.stack[:-1] -%}
                {{- json_put(st, top.acc) -}}
            {%- elif ch not in ' \t\n\r,:' -%}
                {%- set st.word = st.word ~ ch -%}
            {%- endif -%}
        {%- elif st.hex is not none -%}
            {%- set st.hex = st.hex ~ ch -%}
            {%- if st.hex | length == 4 -%}
                {%- set code = st.hex | int(base=16) -%}
                {%- set st.hex = none -%}
                {%- if st.high is not none and code >= 56320 and code < 57344 -%}
                    {%- set st.str = st.str ~ '%c' | format(65536 + (st.high - 55296) * 1024 + code - 56320) -%}
                    {%- set st.high = none -%}
                {%- else -%}
                    {{- json_flush_high(st) -}}
                    {%- if code >= 55296 and code < 56320 -%}
                        {%- set st.high = code -%}
                    {%- else -%}
                        {%- set st.str = st.str ~ '%c' | format(code) -%}
                    {%- endif -%}
                {%- endif -%}
            {%- endif -%}
        {%- elif st.esc -%}
            {%- set st.esc = false -%}
            {%- if ch == 'u' -%}
                {%- set st.hex = '' -%}
            {%- else -%}
                {{- json_flush_high(st) -}}
                {%- set st.str = st.str ~ {'n': '\n', 't': '\t', 'r': '\r', 'b': '\b', 'f': '\f'}.get(ch, ch) -%}
            {%- endif -%}
        {%- elif ch == '\\' -%}
            {%- set st.esc = true -%}
        {%- else -%}
            {{- json_flush_high(st) -}}
            {%- if ch == '"' -%}
                {{- json_put(st, st.str) -}}
                {%- set st.str = none -%}
            {%- else -%}
                {%- set st.str = st.str ~ ch -%}
            {%- endif -%}
        {%- endif -%}
    {%- endfor -%}
    {%- set out.value = st.value -%}
{%- endmacro -%}
{%- set parsed = namespace(value=none) -%}
{%- if open_thinking is defined -%}
    {%- set thinking = open_thinking -%}
{%- elif enable_thinking is defined -%}
    {%- set thinking = enable_thinking -%}
{%- else -%}
    {%- set thinking = false -%}
{%- endif -%}
{%- set has_system = messages and messages[0].role == 'system' -%}
{%- set tool_list = tools if tools else none -%}
{%- if not tool_list and has_system and messages[0].tools -%}
    {%- set tool_list = messages[0].tools -%}
{%- endif -%}
{%- if tool_list is string -%}
    {{- json_load(tool_list, parsed) -}}
    {%- set tool_list = parsed.value -%}
{%- endif -%}
{%- if tool_list -%}
    {%- set block = namespace(text='# Tools\n<tools>') -%}
    {%- for tool in tool_list -%}
        {%- set block.text = block.text ~ '\n' ~ ((tool.function if tool.function is mapping else tool) | tojson) -%}
    {%- endfor -%}
    {%- set tools_block = block.text ~ '\n</tools>' -%}
    {%- if not has_system -%}
        {{- '<|im_start|>system\n' ~ tools_block ~ '<|im_end|>\n' -}}
    {%- endif -%}
{%- endif -%}
{%- for message in messages -%}
    {%- set content = message.content if message.content is string else '' -%}
    {%- if message.role == 'assistant' -%}
        {%- set reasoning = '' -%}
        {%- if message.reasoning_content is string -%}
            {%- set reasoning = message.reasoning_content -%}
        {%- elif '</think>' in content -%}
            {%- set reasoning = content.split('</think>', 1)[0].split('<think>')[-1] -%}
            {%- set content = content.split('</think>', 1)[1] -%}
        {%- endif -%}
        {%- set content = content.lstrip('\n') -%}
        {{- '<|im_start|>assistant\n<think>\n' ~ reasoning.strip('\n') ~ '\n</think>\n\n' ~ content -}}
        {%- set calls = message.tool_calls -%}
        {%- if calls is string -%}
            {{- json_load(calls, parsed) -}}
            {%- set calls = parsed.value -%}
        {%- endif -%}
        {%- if calls is mapping -%}
            {%- set calls = [calls] -%}
        {%- endif -%}
        {%- for call in calls or [] -%}
            {%- set call = call.function if call.function is mapping else call -%}
            {%- set args = call.arguments if call.arguments is defined and call.arguments is not none else {} -%}
            {%- if args is string -%}
                {{- json_load(args, parsed) -}}
                {%- set args = parsed.value if parsed.value is mapping else {} -%}
            {%- endif -%}
            {%- if content or not loop.first -%}
                {{- '\n' -}}
            {%- endif -%}
            {{- '<tool_call>\n{"name": ' ~ (call.name | tojson) ~ ', "arguments": ' ~ (args | tojson) ~ '}\n</tool_call>' -}}
        {%- endfor -%}
        {{- '<|im_end|>\n' -}}
    {%- elif message.role == 'tool' -%}
        {{- '<|im_start|>tool\n<tool_response>\n' ~ content ~ '\n</tool_response><|im_end|>\n' -}}
    {%- elif message.role == 'system' and loop.first and tool_list -%}
        {{- '<|im_start|>system\n' ~ content ~ ('\n\n' if content else '') ~ tools_block ~ '<|im_end|>\n' -}}
    {%- else -%}
        {{- '<|im_start|>' ~ message.role ~ '\n' ~ content ~ '<|im_end|>\n' -}}
    {%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{- '<|im_start|>assistant\n' ~ ('<think>\n' if thinking else '<think>\n\n</think>\n\n') -}}
{%- endif -%}
""".strip()


# ---------------------------------------------------------------------------------------------
# The chat template, in Python (must render exactly what CHAT_TEMPLATE renders)
# ---------------------------------------------------------------------------------------------


def _load_json(value: str, where: str) -> object:
    try:
        return json.loads(value)
    except json.JSONDecodeError as e:
        raise UserError(f"{where}: invalid JSON ({e.msg} at char {e.pos})")


def _dumps(value: object, where: str) -> str:
    try:
        return json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError) as e:
        raise UserError(f"{where}: not JSON-serializable ({e})")


def _tool_lines(tools: object, where: str) -> list[str]:
    """Tools (a list, or its JSON string) -> one canonical JSON line per tool."""
    if isinstance(tools, str):
        tools = _load_json(tools, where)
    if not isinstance(tools, list):
        raise UserError(f"{where}: expected a list of tools, got {type(tools).__name__}")
    lines = []
    for j, tool in enumerate(tools):
        if not isinstance(tool, dict):
            raise UserError(f"{where}[{j}]: expected a tool object, got {type(tool).__name__}")
        function = tool.get("function")
        lines.append(_dumps(function if isinstance(function, dict) else tool, f"{where}[{j}]"))
    return lines


def _tool_call_json(call: object, where: str) -> str:
    """One tool call in any accepted form -> '{"name": ..., "arguments": {...}}'."""
    if not isinstance(call, dict):
        raise UserError(f"{where}: expected an object with 'name' and 'arguments', got {type(call).__name__}")
    if isinstance(call.get("function"), dict):  # OpenAI: {"type": "function", "function": {...}}
        call, where = call["function"], f"{where}.function"
    name = call.get("name")
    if not isinstance(name, str) or not name:
        raise UserError(f"{where}.name: missing or not a string; each tool call needs a function name")
    args = call.get("arguments")
    if args is None or (isinstance(args, str) and not args.strip()):
        args = {}  # some clients send "" for a call without arguments
    if isinstance(args, str):
        args = _load_json(args, f"{where}.arguments")
    if not isinstance(args, dict):
        raise UserError(f"{where}.arguments: expected a JSON object, got {type(args).__name__}")
    return "{" + f'"name": {_dumps(name, where)}, "arguments": {_dumps(args, where + ".arguments")}' + "}"


def _tool_calls(value: object, where: str) -> list[str]:
    """tool_calls of an assistant message (list, one call, or JSON string) -> rendered calls."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return []
    if isinstance(value, str):
        value = _load_json(value, where)
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        raise UserError(f"{where}: expected a list of tool calls, got {type(value).__name__}")
    return [_tool_call_json(call, f"{where}[{j}]") for j, call in enumerate(value)]


def _check_message(message: object, i: int) -> tuple[str, str]:
    """Validate one message; returns (role, content) with content None -> ''."""
    if not isinstance(message, dict):
        raise UserError(f"messages[{i}]: expected an object with 'role' and 'content', "
                        f"got {type(message).__name__}")
    role = message.get("role")
    if role not in ROLES:
        raise UserError(f"messages[{i}].role: unknown role {role!r} (expected {', '.join(ROLES)})")
    content = message.get("content")
    if content is None:
        content = ""
    if not isinstance(content, str):
        raise UserError(f"messages[{i}].content: expected a string, got {type(content).__name__}")
    reasoning = message.get("reasoning_content")
    if reasoning is not None and not isinstance(reasoning, str):
        raise UserError(f"messages[{i}].reasoning_content: expected a string, got {type(reasoning).__name__}")
    return role, content


class _Rendered:
    """A conversation's text as it is built: its pieces, the trained character spans, and the spans
    of text the caller supplied (where no special token may be read)."""

    def __init__(self):
        self.parts: list[str] = []
        self.size = 0  # running length of the text, to record spans without re-joining
        self.trained: list[tuple[int, int]] = []
        self.literal: list[tuple[int, int]] = []

    def add(self, piece: str, literal: bool = False) -> None:
        if literal and piece:
            self.literal.append((self.size, self.size + len(piece)))
        self.parts.append(piece)
        self.size += len(piece)

    def train(self, start: int) -> None:
        """Everything added since `start` is trained."""
        self.trained.append((start, self.size))

    @property
    def text(self) -> str:
        return "".join(self.parts)


# What a caller's text may never turn into: the special tokens (turn markers, <|endoftext|>, reserved).
CONTROL_TOKENS = tuple(t for t in SPECIAL_TOKENS if t not in TAG_TOKENS)


def _assistant_body(out: _Rendered, message: dict, content: str, i: int) -> None:
    """Everything an assistant turn produces after its header, up to and including <|im_end|>."""
    reasoning = message.get("reasoning_content")
    if not isinstance(reasoning, str):
        reasoning = ""
        if END_THINK in content:  # reasoning written inline: "<think>...</think>answer"
            before, content = content.split(END_THINK, 1)
            reasoning = before.split(THINK)[-1]
    content, reasoning = content.lstrip("\n"), reasoning.strip("\n")
    out.add(f"{THINK}\n")
    out.add(reasoning, literal=True)
    out.add(f"\n{END_THINK}\n\n")
    out.add(content, literal=True)
    for j, call in enumerate(_tool_calls(message.get("tool_calls"), f"messages[{i}].tool_calls")):
        if content or j > 0:
            out.add("\n")
        out.add(f"{TOOL_CALL}\n")
        out.add(call, literal=True)
        out.add(f"\n{END_TOOL_CALL}")
    out.add(IM_END)


def _render(messages: list[dict], tools, add_generation_prompt: bool, open_thinking: bool) -> _Rendered:
    if not isinstance(messages, list):
        raise UserError(f"messages: expected a list of messages, got {type(messages).__name__}")
    checked = [_check_message(m, i) for i, m in enumerate(messages)]
    has_system = bool(checked) and checked[0][0] == "system"
    tool_source, where = tools, "tools"
    if not tool_source and has_system and messages[0].get("tools"):
        tool_source, where = messages[0]["tools"], "messages[0].tools"
    lines = _tool_lines(tool_source, where) if tool_source else []
    out = _Rendered()

    def tools_block() -> None:
        out.add("# Tools\n<tools>\n")
        out.add("\n".join(lines), literal=True)
        out.add("\n</tools>")

    if lines and not has_system:
        out.add(f"{IM_START}system\n")
        tools_block()
        out.add(f"{IM_END}\n")
    for i, ((role, content), message) in enumerate(zip(checked, messages)):
        if role == "assistant":
            out.add(f"{IM_START}assistant\n")
            start = out.size
            _assistant_body(out, message, content, i)
            out.train(start)
            out.add("\n")
        elif role == "tool":
            out.add(f"{IM_START}tool\n{TOOL_RESPONSE}\n")
            out.add(content, literal=True)
            out.add(f"\n{END_TOOL_RESPONSE}{IM_END}\n")
        else:
            out.add(f"{IM_START}{role}\n")
            out.add(content, literal=True)
            if role == "system" and i == 0 and lines:
                out.add("\n\n" if content else "")
                tools_block()
            out.add(f"{IM_END}\n")
    if add_generation_prompt:
        think = f"{THINK}\n" if open_thinking else f"{THINK}\n\n{END_THINK}\n\n"
        out.add(f"{IM_START}assistant\n{think}")
    return out


def render_chat_text(
    messages: list[dict],
    tools: list[dict] | str | None = None,
    add_generation_prompt: bool = False,
    open_thinking: bool = False,
) -> tuple[str, list[tuple[int, int]]]:
    """Render a conversation; returns (text, trained character spans [start, end))."""
    out = _render(messages, tools, add_generation_prompt, open_thinking)
    return out.text, out.trained


def _mask_from_offsets(offsets: list[tuple[int, int]], spans: list[tuple[int, int]]) -> list[int]:
    """mask[i] = 1 iff token i's characters lie inside one trained span (both sorted)."""
    mask, k = [], 0
    for start, end in offsets:
        while k < len(spans) and spans[k][1] <= start:  # spans entirely before this token
            k += 1
        inside = k < len(spans) and spans[k][0] <= start and end <= spans[k][1]
        mask.append(1 if inside else 0)
    return mask


def render_chat_batch(
    tok: Tokenizer,
    conversations: list[list[dict]],
    tools: list[dict] | str | None = None,
    add_generation_prompt: bool = False,
    open_thinking: bool = False,
) -> list[tuple[list[int], list[int]]]:
    """Render and tokenize many conversations with one (multi-threaded) batch encode.

    Returns one (ids, mask) pair per conversation; ids are exactly the tokenization of the
    rendered text, mask marks the tokens the model is trained to predict.
    """
    rendered = [_render(c, tools, add_generation_prompt, open_thinking) for c in conversations]
    texts = [r.text for r in rendered]
    encodings = tok.backend.encode_batch(texts, add_special_tokens=False)
    out = []
    for e, r, text in zip(encodings, rendered, texts):
        ids, offsets = e.ids, e.offsets
        if _reads_caller_text_as_tokens(tok, ids, offsets, r.literal):
            ids, offsets = _encode_escaped(tok, text, r.literal)
        out.append((ids, _mask_from_offsets(offsets, r.trained)))
    return out


def _reads_caller_text_as_tokens(tok: Tokenizer, ids: list[int], offsets, literal) -> bool:
    """Whether a control token starts inside the caller's text."""
    added = tok.added_tokens()
    for token_id, (start, _) in zip(ids, offsets):
        if added.get(token_id) in CONTROL_TOKENS and any(a <= start < b for a, b in literal):
            return True
    return False


def _encode_escaped(tok: Tokenizer, text: str, literal) -> tuple[list[int], list[tuple[int, int]]]:
    """Encode piece by piece: the template's pieces as they are, the caller's text with every
    banned token spelled as plain characters (its first character encoded on its own)."""
    cuts, pos = [], 0
    for a, b in literal:
        cuts += [(pos, a, False), (a, b, True)]
        pos = b
    cuts.append((pos, len(text), False))
    ids, offsets = [], []
    for a, b, caller in cuts:
        for start, end in _split_at(text, a, b, CONTROL_TOKENS if caller else ()):
            e = tok.backend.encode(text[start:end], add_special_tokens=False)
            ids += e.ids
            offsets += [(start + x, start + y) for x, y in e.offsets]
    return ids, offsets


def _split_at(text: str, a: int, b: int, banned: tuple[str, ...]) -> list[tuple[int, int]]:
    """[a, b) cut so that no piece contains a whole banned token: each occurrence is split
    after its first character."""
    if not banned:
        return [(a, b)] if b > a else []
    points = sorted({i + 1 for t in banned for i in _find_all(text, t, a, b)})
    bounds = [a, *points, b]
    return [(x, y) for x, y in zip(bounds, bounds[1:]) if y > x]


def _find_all(text: str, needle: str, a: int, b: int) -> list[int]:
    out, i = [], text.find(needle, a, b)
    while i >= 0:
        out.append(i)
        i = text.find(needle, i + 1, b)
    return out


def render_chat(
    tok: Tokenizer,
    messages: list[dict],
    tools: list[dict] | str | None = None,
    add_generation_prompt: bool = False,
    open_thinking: bool = False,
) -> tuple[list[int], list[int]]:
    """Render and tokenize one conversation: (ids, loss mask)."""
    return render_chat_batch(tok, [messages], tools, add_generation_prompt, open_thinking)[0]
