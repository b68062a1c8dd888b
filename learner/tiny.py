"""A tiny Qwen2-shaped model and BPE tokenizer, built locally in seconds, for tests and the CPU demo.

`build_tiny_model` writes a randomly initialised `Qwen2ForCausalLM` plus a byte-level BPE tokenizer
trained in-process on a small built-in corpus of chat, tool-call and JSON text, with a Qwen2.5-style
hermes chat template (the wire format of docs/vllm.md §3.7). The folder loads with the `Auto*`
classes offline and can be served by `LocalEngine` or a real vLLM. `save_tiny_lora` writes a real,
vLLM-servable PEFT LoRA for it whose weights measurably change the output; `fit_tiny_model` teaches
a tiny model a few fixed answers (tests use it to make tool-call output deterministic).

Tokenizer choice: spaces are split into their own tokens before the
byte-level step, so a value in a query and the same value inside a JSON string are the same token,
and every digit is its own token, so numbers are copied digit by digit. With
`TinyModelConfig.number_tokens_below` (the demo policy uses 1000) whole numbers are single added
tokens instead, and a number is copied like a word (a demo policy built with one token per digit
got nearly every multi-digit number wrong, e.g. bills of 110 copied as 710).

This module does not train a useful model: outputs are gibberish until a learner trains it.
torch/transformers/tokenizers/peft are imported lazily inside the functions.
"""

from __future__ import annotations

import json
import logging
import random
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
TOOL_TOKENS = ("<tool_call>", "</tool_call>", "<tools>", "</tools>", "<tool_response>", "</tool_response>")
LORA_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."
QWEN2_PRETOKENIZE_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)

# Qwen2.5's template, rewritten: tolerant of null content and of arguments given as JSON strings.
CHAT_TEMPLATE = (
    "{%- if tools %}\n"
    "    {{- '<|im_start|>system\\n' }}\n"
    "    {%- if messages[0].role == 'system' %}\n"
    "        {{- messages[0].content or '' }}\n"
    "    {%- else %}\n"
    "        {{- '" + DEFAULT_SYSTEM_PROMPT + "' }}\n"
    "    {%- endif %}\n"
    "    {{- '\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n"
    "You are provided with function signatures within <tools></tools> XML tags:\\n<tools>' }}\n"
    "    {%- for tool in tools %}\n"
    "        {{- '\\n' }}\n"
    "        {{- tool | tojson }}\n"
    "    {%- endfor %}\n"
    "    {{- '\\n</tools>\\n\\nFor each function call, return a json object with function name and "
    "arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n"
    '{"name": <function-name>, "arguments": <args-json-object>}\\n</tool_call><|im_end|>\\n\' }}\n'
    "{%- else %}\n"
    "    {%- if messages[0].role == 'system' %}\n"
    "        {{- '<|im_start|>system\\n' + (messages[0].content or '') + '<|im_end|>\\n' }}\n"
    "    {%- else %}\n"
    "        {{- '<|im_start|>system\\n" + DEFAULT_SYSTEM_PROMPT + "<|im_end|>\\n' }}\n"
    "    {%- endif %}\n"
    "{%- endif %}\n"
    "{%- for message in messages %}\n"
    "    {%- if message.role == 'user' or (message.role == 'system' and not loop.first)"
    " or (message.role == 'assistant' and not message.tool_calls) %}\n"
    "        {{- '<|im_start|>' + message.role + '\\n' + (message.content or '') + '<|im_end|>\\n' }}\n"
    "    {%- elif message.role == 'assistant' %}\n"
    "        {{- '<|im_start|>' + message.role }}\n"
    "        {%- if message.content %}\n"
    "            {{- '\\n' + message.content }}\n"
    "        {%- endif %}\n"
    "        {%- for tool_call in message.tool_calls %}\n"
    "            {%- if tool_call.function is defined %}\n"
    "                {%- set tool_call = tool_call.function %}\n"
    "            {%- endif %}\n"
    '            {{- \'\\n<tool_call>\\n{"name": "\' }}\n'
    "            {{- tool_call.name }}\n"
    '            {{- \'", "arguments": \' }}\n'
    "            {%- if tool_call.arguments is string %}\n"
    "                {{- tool_call.arguments }}\n"
    "            {%- else %}\n"
    "                {{- tool_call.arguments | tojson }}\n"
    "            {%- endif %}\n"
    "            {{- '}\\n</tool_call>' }}\n"
    "        {%- endfor %}\n"
    "        {{- '<|im_end|>\\n' }}\n"
    "    {%- elif message.role == 'tool' %}\n"
    "        {%- if loop.index0 == 0 or messages[loop.index0 - 1].role != 'tool' %}\n"
    "            {{- '<|im_start|>user' }}\n"
    "        {%- endif %}\n"
    "        {{- '\\n<tool_response>\\n' }}\n"
    "        {{- message.content or '' }}\n"
    "        {{- '\\n</tool_response>' }}\n"
    "        {%- if loop.last or messages[loop.index0 + 1].role != 'tool' %}\n"
    "            {{- '<|im_end|>\\n' }}\n"
    "        {%- endif %}\n"
    "    {%- endif %}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n"
    "    {{- '<|im_start|>assistant\\n' }}\n"
    "{%- endif %}\n"
)


@dataclass(frozen=True)
class TinyModelConfig:
    """Shape of the tiny model. The defaults give about 0.5M parameters.

    Keep `hidden_size / num_attention_heads` at 32 or more if the model is to be served by vLLM,
    whose attention kernels have no smaller head size.
    """

    hidden_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    intermediate_size: int = 512
    vocab_size: int = 1024
    """Target BPE vocabulary (specials and tool tags included); the trainer may stop a little short."""
    number_tokens_below: int = 0
    """Whole-number tokens: every integer from 10 up to this bound (exclusive) becomes one token, on top
    of ``vocab_size`` (0 = digits only, one token each). A number is then copied from a query as one
    token instead of digit by digit, which a model this small learns far more reliably."""
    max_position_embeddings: int = 4096

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError("hidden_size must be a multiple of num_attention_heads")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError("num_attention_heads must be a multiple of num_key_value_heads")
        if self.vocab_size < 512:
            raise ValueError("vocab_size must be at least 512 (256 bytes plus merges and special tokens)")
        if not (self.number_tokens_below == 0 or 10 < self.number_tokens_below <= 100_000):
            raise ValueError("number_tokens_below must be 0 (off) or in (10, 100000]")


# --- the built-in corpus -------------------------------------------------------------------------

_CITIES = [
    "Paris",
    "London",
    "Tokyo",
    "Berlin",
    "Madrid",
    "Rome",
    "Lisbon",
    "Oslo",
    "Cairo",
    "Lima",
    "Sydney",
    "Toronto",
    "Seoul",
    "Mumbai",
    "Boston",
    "Denver",
    "Dublin",
    "Vienna",
    "Prague",
    "Zurich",
    "Athens",
    "Warsaw",
    "Nairobi",
    "Bangkok",
    "Chicago",
    "Miami",
    "Seattle",
    "Montreal",
    "Istanbul",
]
_WORD_TEXT = (
    "the a an to of in on for with and or is are was be can you please what how when where which "
    "weather temperature forecast today tomorrow week city country currency amount convert send email "
    "message subject body search web news find book table restaurant people time date event meeting "
    "calendar timer minutes seconds hours translate language text English French Spanish German stock "
    "price ticker play music song genre jazz rock tip bill percent directions route walking driving "
    "transit user assistant system function tool call result error name arguments value number string "
    "object array boolean true false null required description parameters type properties enum unit "
    "celsius fahrenheit hello thanks sorry yes no maybe good bad new old big small first last next "
    "morning evening night Monday Tuesday Wednesday Thursday Friday Saturday Sunday January February "
    "March April May June July August September October November December dollars euros yen pounds "
    "account order payment invoice customer product delivery address phone number list items add "
    "remove update delete create get set check show open close start stop cancel confirm reply "
    "question answer try again wrong right correct failed because should would could need want "
    "help explain reason mistake missing value called tool instead"
)
_WORDS = _WORD_TEXT.split()
_TOOLS: list[dict[str, Any]] = [
    {
        "name": "get_weather",
        "description": "Get the current weather in a city.",
        "properties": {
            "city": {"type": "string", "description": "City name."},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        },
        "required": ["city"],
    },
    {
        "name": "convert_currency",
        "description": "Convert an amount between currencies.",
        "properties": {"amount": {"type": "number"}, "from": {"type": "string"}, "to": {"type": "string"}},
        "required": ["amount", "from", "to"],
    },
    {
        "name": "send_email",
        "description": "Send an email message.",
        "properties": {"to": {"type": "string"}, "subject": {"type": "string"}, "body": {"type": "string"}},
        "required": ["to", "subject"],
    },
    {
        "name": "search_web",
        "description": "Search the web for a query.",
        "properties": {"query": {"type": "string"}, "max_results": {"type": "integer"}},
        "required": ["query"],
    },
    {
        "name": "set_timer",
        "description": "Set a timer.",
        "properties": {"minutes": {"type": "integer"}, "label": {"type": "string"}},
        "required": ["minutes"],
    },
    {
        "name": "get_stock_price",
        "description": "Get the latest stock price for a ticker symbol.",
        "properties": {"ticker": {"type": "string"}},
        "required": ["ticker"],
    },
    {
        "name": "book_table",
        "description": "Book a table at a restaurant.",
        "properties": {"restaurant": {"type": "string"}, "people": {"type": "integer"}, "time": {"type": "string"}},
        "required": ["restaurant", "people"],
    },
    {
        "name": "get_directions",
        "description": "Get directions between two places.",
        "properties": {
            "origin": {"type": "string"},
            "destination": {"type": "string"},
            "mode": {"type": "string", "enum": ["driving", "walking", "transit"]},
        },
        "required": ["origin", "destination"],
    },
]


def _openai_tool(tool: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {
            "name": tool["name"],
            "description": tool["description"],
            "parameters": {"type": "object", "properties": tool["properties"], "required": tool["required"]},
        },
    }


def _fake_value(schema: dict[str, Any], rng: random.Random) -> Any:
    if "enum" in schema:
        return rng.choice(schema["enum"])
    if schema["type"] == "integer":
        return rng.randint(0, 500)
    if schema["type"] == "number":
        return round(rng.uniform(0, 10000), rng.choice([0, 1, 2]))
    return rng.choice(
        [rng.choice(_CITIES), " ".join(rng.choices(_WORDS, k=rng.randint(1, 4))), f"{rng.choice(_WORDS)}@example.com"]
    )


def tiny_corpus(n_conversations: int = 600, seed: int = 0) -> list[str]:
    """Chat-formatted conversations with tools, tool calls, tool responses and prose, plus JSON lines."""
    import jinja2.sandbox

    env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.filters["tojson"] = lambda x: json.dumps(x, ensure_ascii=False)
    template = env.from_string(CHAT_TEMPLATE)
    rng = random.Random(seed)
    texts: list[str] = []
    for _ in range(n_conversations):
        tools = rng.sample(_TOOLS, k=rng.randint(1, 4))
        tool = rng.choice(tools)
        args = {
            k: _fake_value(v, rng) for k, v in tool["properties"].items() if k in tool["required"] or rng.random() < 0.5
        }
        query = " ".join(rng.choices(_WORDS, k=rng.randint(4, 14))).capitalize() + rng.choice(["?", ".", "!"])
        messages: list[dict[str, Any]] = [{"role": "user", "content": query}]
        if rng.random() < 0.5:
            messages.insert(0, {"role": "system", "content": DEFAULT_SYSTEM_PROMPT})
        call = {"name": tool["name"], "arguments": args}
        messages.append({"role": "assistant", "content": None, "tool_calls": [{"type": "function", "function": call}]})
        messages.append({"role": "tool", "content": json.dumps({"result": _fake_value({"type": "string"}, rng)})})
        messages.append({"role": "assistant", "content": " ".join(rng.choices(_WORDS, k=rng.randint(3, 12))) + "."})
        use_tools = rng.random() < 0.8
        texts.append(
            template.render(
                messages=messages,
                tools=[_openai_tool(t) for t in tools] if use_tools else None,
                add_generation_prompt=False,
            )
        )
        texts.append(json.dumps(call, ensure_ascii=False, separators=rng.choice([(",", ":"), (", ", ": ")])))
    texts.append(" ".join(str(i) for i in range(1000)))
    return texts


# --- tokenizer and model -------------------------------------------------------------------------


def build_tiny_tokenizer(
    vocab_size: int = 1024, extra_corpus: Sequence[str] = (), *, number_tokens_below: int = 0
) -> Any:
    """A byte-level BPE tokenizer (spaces and digits as their own tokens) wrapped for transformers.

    With ``number_tokens_below`` N, the integers 10..N-1 are added tokens (not special, not
    normalised), matched before pre-tokenisation leftmost-longest: with N = 1000, "3200" is "320" "0"
    and "19:05" is "19" ":" "0" "5" wherever they appear, in a query or in a call's JSON. Added tokens
    survive every loader
    (transformers 4 and 5, vLLM) unchanged, as the tool tags do.

    The pre-tokenizer is Qwen2's split followed by isolating every space. No merge can therefore
    contain a space, which makes the tokenizer give identical ids whether it is loaded from
    `tokenizer.json` as is (transformers 4, vLLM) or rebuilt by transformers 5's `Qwen2Tokenizer`
    (which re-creates Qwen2's pre-tokenizer from vocab and merges).
    """
    from tokenizers import (
        AddedToken,
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE_REGEX), "isolated"),
            pre_tokenizers.Split(" ", "isolated"),
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(TOOL_TOKENS),
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([*tiny_corpus(), *extra_corpus], trainer)
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in TOOL_TOKENS])
    if number_tokens_below:
        tok.add_tokens([AddedToken(str(n), special=False, normalized=False) for n in range(10, number_tokens_below)])
    fast: Any = PreTrainedTokenizerFast  # untyped in transformers
    hf = fast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        clean_up_tokenization_spaces=False,
        model_max_length=32768,
        split_special_tokens=False,
    )
    hf.chat_template = CHAT_TEMPLATE
    return hf


def build_tiny_model(
    out_dir: str | Path, seed: int = 0, config: TinyModelConfig | None = None, *, extra_corpus: Sequence[str] = ()
) -> Path:
    """Write a random tiny Qwen2 causal LM with its tokenizer, chat template and generation config.

    The same seed, config and `extra_corpus` (more tokenizer training text, e.g. a demo's task data)
    give byte-identical files. Needs no network; takes about a second once torch is imported.
    """
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    cfg = config or TinyModelConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tiny_tokenizer(cfg.vocab_size, extra_corpus, number_tokens_below=cfg.number_tokens_below)
    tokenizer.model_max_length = cfg.max_position_embeddings
    eos_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    eot_id = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    model_config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads,
        intermediate_size=cfg.intermediate_size,
        max_position_embeddings=cfg.max_position_embeddings,
        tie_word_embeddings=True,
        bos_token_id=eot_id,
        eos_token_id=eos_id,
        pad_token_id=eot_id,
        initializer_range=0.02,
        rms_norm_eps=1e-6,
        hidden_act="silu",
        use_sliding_window=False,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(model_config)
    generation_config: Any = GenerationConfig  # untyped in transformers
    model.generation_config = generation_config(
        bos_token_id=eot_id, eos_token_id=[eos_id, eot_id], pad_token_id=eot_id, do_sample=False
    )
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    _make_tokenizer_config_portable(out)
    log.info(
        "tiny model (%d parameters, vocab %d, seed %d) written to %s",
        sum(p.numel() for p in model.parameters()),
        len(tokenizer),
        seed,
        out,
    )
    return out


def _make_tokenizer_config_portable(out: Path) -> None:
    """transformers 5 names its own backend class; older releases (and vLLM) need the generic one."""
    path = out / "tokenizer_config.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    data["tokenizer_class"] = "PreTrainedTokenizerFast"
    path.write_text(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")


# --- adapters and teaching -----------------------------------------------------------------------


def save_tiny_lora(
    model_dir: str | Path,
    out_dir: str | Path,
    *,
    seed: int = 0,
    r: int = 8,
    noise: float = 0.5,
    target_modules: Sequence[str] = LORA_TARGET_MODULES,
) -> Path:
    """Write a real PEFT LoRA for the model at `model_dir` whose B matrices carry seeded noise.

    vLLM-servable (§7): uniform rank, lora_alpha = 2r, no modules_to_save, no DoRA, bias none.
    `adapter_config.json` and `adapter_model.safetensors` land at the root of `out_dir`.
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    lora = LoraConfig(
        r=r,
        lora_alpha=2 * r,
        target_modules=list(target_modules),
        lora_dropout=0.0,
        bias="none",
        init_lora_weights=True,
        task_type="CAUSAL_LM",
    )
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        # transformers 5 deprecates an attribute PEFT 0.21 still reads; nothing for our callers to do.
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
        torch.manual_seed(seed)
        peft_model = get_peft_model(model, lora)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sorted(peft_model.named_parameters()):
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * noise)
    out = Path(out_dir)
    peft_model.save_pretrained(str(out))
    log.info("tiny LoRA r=%d (seed %d) written to %s", r, seed, out)
    return out


@dataclass(frozen=True)
class FixedAnswer:
    """One prompt (messages and optional tools) and the exact text the model should answer with."""

    messages: list[dict[str, Any]]
    answer: str
    tools: list[dict[str, Any]] | None = None


def fit_tiny_model(
    model_dir: str | Path,
    out_dir: str | Path,
    examples: Sequence[FixedAnswer],
    *,
    max_steps: int = 150,
    target_loss: float = 0.02,
    lr: float = 3e-3,
    seed: int = 0,
    num_threads: int | None = None,
    on_step: Callable[[int, float], None] | None = None,
) -> Path:
    """Full fine-tuning until the model answers each prompt with its fixed text and `<|im_end|>`.

    Memorisation, not learning: tests use it to make a tiny model's output known. The loss covers the
    answer tokens only; prompts are rendered with the model's own chat template. Stops once the mean
    loss is below `target_loss` (a margin that keeps greedy decoding exact) or after `max_steps`.
    `num_threads` sets torch's thread count for the run only (1 is fastest for tiny models on busy CPUs).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    rows = []
    for ex in examples:
        tools: Any = ex.tools
        prompt = tokenizer.apply_chat_template(ex.messages, tools=tools, add_generation_prompt=True, tokenize=False)
        p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        a_ids = tokenizer(ex.answer + "<|im_end|>", add_special_tokens=False)["input_ids"]
        rows.append((p_ids + a_ids, [-100] * len(p_ids) + a_ids))
    width = max(len(ids) for ids, _ in rows)
    pad = tokenizer.pad_token_id
    input_ids = torch.tensor([ids + [pad] * (width - len(ids)) for ids, _ in rows])
    labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in rows])
    mask = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in rows])
    threads = torch.get_num_threads()
    if num_threads:
        torch.set_num_threads(num_threads)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model: Any = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
            model.train()
            optim = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
            value, step = float("inf"), 0
            for step in range(1, max_steps + 1):
                loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
                optim.zero_grad()
                loss.backward()
                optim.step()
                value = loss.item()
                if on_step is not None:
                    on_step(step, value)
                if value < target_loss:
                    break
    finally:
        torch.set_num_threads(threads)
    if value >= target_loss:
        log.warning("fit_tiny_model stopped at loss %.4f after %d steps (target %.4f)", value, step, target_loss)
    model.eval()
    out = Path(out_dir)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    _make_tokenizer_config_portable(out)
    log.info("fitted %d fixed answers in %d steps (loss %.4f) into %s", len(rows), step, value, out)
    return out
