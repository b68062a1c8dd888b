"""The in-process engine: a Hugging Face causal LM plus PEFT LoRA adapters, answering like vLLM.

Who calls it: the agent on machines without vLLM (the embedded default), `rrr engine serve` (which
wraps it in the vLLM-compatible HTTP server and uses `render_prompt`/`encode`/`generate` for
streaming), and tests. Prompts are rendered with the tokenizer's own chat template; output is run
through the model's tool-call parser (`tool_call_parser`, vLLM's names: hermes by default,
llama3_json, mistral, pythonic; `tools.toolcall_formats`, §3.9) and turned into the exact non-streaming
response of vLLM 0.33 (docs/vllm.md §3.3-§3.5), adapters are validated as vLLM does
(§7, §8.4) and routed per request by `model` (§2.7).

What it deliberately does not do: batching (one generation at a time, under a lock; concurrent
requests queue), constrained decoding (§3.8), streaming frames (the server's job), logprobs, n > 1.
torch/transformers/peft are imported lazily, so importing this module costs nothing; the pure
helpers (`validate_adapter_dir`, `check_tool_request`, `build_chat_completion`) need no torch.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engines.base import (
    AdapterError,
    ChatRequest,
    ChatResult,
    Engine,
    EngineError,
    EngineRequestError,
    EngineTimeout,
)
from engines.wire import (
    QWEN2_LORA_MODULES,
    add_lora_failed,
    bad_request,
    build_chat_completion,
    check_tool_request,
    model_permission,
    normalize_messages,
    validate_adapter_dir,
)
from tools.toolcall_formats import DEFAULT_TOOL_CALL_PARSER, tool_call_format

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

# --- the engine -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class GenerationOutput:
    """One generation: text without the EOS token, vLLM's finish reason and token counts."""

    text: str
    finish_reason: str
    """`stop` (EOS or a stop string) or `length`."""
    prompt_tokens: int
    completion_tokens: int
    stop_reason: str | int | None = None
    """The stop string that ended it, or a non-primary EOS token id (as vLLM reports), else None."""


@dataclass
class _Adapter:
    name: str
    path: str
    key: str
    """PEFT's adapter name: ours are free-form (dots, '#'), PEFT's must be module-name safe."""
    config: dict[str, Any]


class LocalEngine:
    """A causal LM (path or hub id) with PEFT adapters, serving OpenAI chat completions in-process."""

    def __init__(
        self,
        model_path: str,
        *,
        device: str | None = None,
        dtype: Any = None,
        served_name: str | None = None,
        max_model_len: int | None = None,
        max_lora_rank: int = 16,
        enable_lora: bool = True,
        num_threads: int | None = None,
        name: str = "local",
        timeout: float | None = None,
        load: bool = True,
        tool_call_parser: str = DEFAULT_TOOL_CALL_PARSER,
    ) -> None:
        self.tool_call_format = tool_call_format(tool_call_parser)  # unknown names fail before loading
        self.tool_call_parser = tool_call_parser
        self.name = name
        self.model_path = model_path
        self.served_name = served_name or model_path
        self.max_lora_rank = max_lora_rank
        self.enable_lora = enable_lora
        self.timeout = timeout
        self._device_arg = device
        self._dtype_arg = dtype
        self._max_model_len_arg = max_model_len
        self._num_threads = num_threads
        self._lock = threading.Lock()
        self._tok_lock = threading.RLock()
        self._adapters: dict[str, _Adapter] = {}
        self._keys = 0
        self._model: Any = None
        self._peft: Any = None
        self._tokenizer: Any = None
        self.device = "cpu"
        self.max_model_len = 0
        self._eos_ids: set[int] = set()
        self._primary_eos: int | None = None
        self._gen_defaults: dict[str, Any] = {}
        self._lora_modules: frozenset[str] = QWEN2_LORA_MODULES
        if load:
            self.load()

    # lifecycle

    def load(self) -> None:
        """Load the model and tokenizer (idempotent). Raises on a model or tokenizer that cannot serve."""
        with self._lock:
            if self._model is not None:
                return
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

            if self._num_threads:
                torch.set_num_threads(self._num_threads)
            device = self._device_arg or ("cuda" if torch.cuda.is_available() else "cpu")
            dtype = self._dtype_arg
            if dtype is None:
                dtype = torch.float32 if device == "cpu" else "auto"
            elif isinstance(dtype, str) and dtype != "auto":
                dtype = getattr(torch, dtype)
            tokenizer = AutoTokenizer.from_pretrained(self.model_path)
            if not tokenizer.chat_template:
                raise EngineError(f"the tokenizer of {self.model_path} has no chat template")
            model: Any = AutoModelForCausalLM.from_pretrained(self.model_path, dtype=dtype)
            model = model.to(device).eval()
            try:
                gen = GenerationConfig.from_pretrained(self.model_path)
            except OSError:
                gen = model.generation_config
            eos = gen.eos_token_id
            eos_ids = {eos} if isinstance(eos, int) else set(eos or [])
            if tokenizer.eos_token_id is not None:
                eos_ids.add(tokenizer.eos_token_id)
            self._primary_eos = tokenizer.eos_token_id
            self._eos_ids = eos_ids
            # Like vLLM, only values the config sets explicitly become defaults; HF's do_sample=False
            # (or no sampling values at all) means greedy.
            explicit = gen.to_diff_dict()
            self._gen_defaults = {k: explicit[k] for k in ("top_p", "top_k", "repetition_penalty") if k in explicit}
            self._gen_defaults["temperature"] = explicit.get("temperature", 1.0) if gen.do_sample else 0.0
            limit = getattr(model.config, "max_position_embeddings", None) or tokenizer.model_max_length
            self.max_model_len = int(self._max_model_len_arg or limit)
            self._lora_modules = (
                frozenset(
                    n.rsplit(".", 1)[-1]
                    for n, m in model.named_modules()
                    if isinstance(m, torch.nn.Linear) and not n.endswith("lm_head")
                )
                or QWEN2_LORA_MODULES
            )
            self.device = device
            self._tokenizer = tokenizer
            self._model = model
        log.info("local engine loaded %s on %s (max_model_len %d)", self.model_path, self.device, self.max_model_len)

    async def health(self) -> bool:
        return self._model is not None

    async def aclose(self) -> None:
        """Drop the model (after the running generation); `health()` is False afterwards."""
        await asyncio.to_thread(self._close_sync)

    def _close_sync(self) -> None:
        with self._lock:
            self._model = self._peft = self._tokenizer = None
            self._adapters.clear()

    async def base_model(self) -> str:
        return self.served_name

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            raise EngineError("the local engine is not loaded")
        return self._tokenizer

    # prompts

    def render_prompt(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None) -> str:
        """The chat template's text for `messages` (+ `tools`), ending with the assistant header."""
        try:
            with self._tok_lock:
                text = self.tokenizer.apply_chat_template(
                    normalize_messages(messages), tools=tools or None, add_generation_prompt=True, tokenize=False
                )
        except EngineError:
            raise
        except Exception as exc:  # jinja's TemplateError, a missing key: vLLM answers 400
            raise bad_request(f"the chat template could not render the messages: {exc}", None) from exc
        return str(text)

    def encode(self, text: str) -> list[int]:
        """Token ids of a rendered prompt (no special tokens added: the template has them)."""
        with self._tok_lock:
            return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    # adapters

    def resolve_model(self, model: str | None) -> str | None:
        """The adapter name for a request's `model`, None for the base; unknown names: 404 (§2.7)."""
        if not model or model == self.served_name:
            return None
        if model in self._adapters:
            return model
        raise EngineRequestError(
            404, f"The model `{model}` does not exist. Valid aliases: {self.served_name}.", "NotFoundError", "model"
        )

    async def load_adapter(self, name: str, path: str, *, load_inplace: bool = False) -> None:
        """Load a PEFT LoRA directory under `name` (vLLM's checks and messages, §2.2)."""
        if not name or not path:
            raise AdapterError(400, "Both 'lora_name' and 'lora_path' must be provided.", "InvalidUserInput")
        if name == self.served_name:
            raise AdapterError(
                400, f"The lora adapter '{name}' conflicts with a served base model.", "InvalidUserInput"
            )
        if name in self._adapters and not load_inplace:
            raise AdapterError(
                400,
                f"The lora adapter '{name}' has already been loaded. If you want to load the "
                "adapter in place, set 'load_inplace' to True.",
                "InvalidUserInput",
            )
        if not self.enable_lora:
            raise add_lora_failed("LoRA is not enabled. Please set `enable_lora` to True.")
        config = validate_adapter_dir(path, self.max_lora_rank, name=name, supported_modules=self._lora_modules)
        await asyncio.to_thread(self._load_adapter_sync, name, path, config, load_inplace)

    def _load_adapter_sync(self, name: str, path: str, config: dict[str, Any], load_inplace: bool) -> None:
        with self._lock:
            if self._model is None:
                raise EngineError("the local engine is not loaded")
            if name in self._adapters and not load_inplace:  # a concurrent load of the same name won
                raise AdapterError(
                    400,
                    f"The lora adapter '{name}' has already been loaded. If you want to load "
                    "the adapter in place, set 'load_inplace' to True.",
                    "InvalidUserInput",
                )
            self._keys += 1
            key = f"lora{self._keys}"
            try:
                self._peft_load(key, str(Path(path).expanduser()))
            except Exception as exc:  # PEFT raises many kinds; all mean "incompatible with this model"
                log.warning("loading adapter %s failed", name, exc_info=True)
                raise add_lora_failed(f"Loading lora {name} failed: {type(exc).__name__}: {exc}") from exc
            old = self._adapters.get(name)
            if old is not None:  # in place: same position in the dict, new weights
                self._peft.set_adapter(key)
                self._peft.delete_adapter(old.key)
                old.path, old.key, old.config = path, key, config
            else:
                self._adapters[name] = _Adapter(name=name, path=path, key=key, config=config)
        log.info("adapter %s loaded from %s", name, path)

    def _peft_load(self, key: str, path: str) -> None:
        from peft import PeftConfig, PeftModel

        if self._peft is not None:
            try:
                self._peft.load_adapter(path, adapter_name=key, is_trainable=False)
            except Exception:
                if key in self._peft.peft_config:
                    self._peft.delete_adapter(key)
                raise
            return
        config = PeftConfig.from_pretrained(path)
        config.inference_mode = True
        peft_model = PeftModel(self._model, config, adapter_name=key)
        try:
            peft_model.load_adapter(path, adapter_name=key, is_trainable=False)
        except Exception:
            self._model = peft_model.unload()  # take the injected LoRA layers out of the base again
            raise
        self._peft = peft_model.eval()

    async def unload_adapter(self, name: str) -> None:
        """Forget `name` (404 `NotFoundError` if unknown); waits for the running generation."""
        if not name:
            raise AdapterError(400, "'lora_name' needs to be provided to unload a LoRA adapter.", "InvalidUserInput")
        if name not in self._adapters:
            raise AdapterError(404, f"The lora adapter '{name}' cannot be found.", "NotFoundError")
        await asyncio.to_thread(self._unload_adapter_sync, name)

    def _unload_adapter_sync(self, name: str) -> None:
        with self._lock:
            adapter = self._adapters.pop(name, None)
            if adapter is None:
                raise AdapterError(404, f"The lora adapter '{name}' cannot be found.", "NotFoundError")
            if self._adapters:
                self._peft.set_adapter(next(iter(self._adapters.values())).key)
                self._peft.delete_adapter(adapter.key)
            else:  # PEFT cannot run with zero adapters: go back to the plain base model
                self._model = self._peft.unload()
                self._peft = None
        log.info("adapter %s unloaded", name)

    def replicas(self) -> list[Engine]:
        return [self]

    def healthy(self) -> bool:
        return True

    async def list_models(self) -> list[dict[str, Any]]:
        """vLLM's `/v1/models` cards: the base first, then adapters in load order (§2.5)."""
        now = int(time.time())
        cards = [
            {
                "id": self.served_name,
                "object": "model",
                "created": now,
                "owned_by": "vllm",
                "root": self.model_path,
                "parent": None,
                "max_model_len": self.max_model_len,
                "permission": [model_permission()],
            }
        ]
        cards += [
            {
                "id": a.name,
                "object": "model",
                "created": now,
                "owned_by": "vllm",
                "root": a.path,
                "parent": self.served_name,
                "max_model_len": None,
                "permission": [model_permission()],
            }
            for a in list(self._adapters.values())
        ]
        return cards

    # generation

    def generate(
        self,
        prompt_ids: Sequence[int],
        *,
        adapter: str | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        top_k: int | None = None,
        repetition_penalty: float | None = None,
        seed: int | None = None,
        stop: Sequence[str] | None = None,
        skip_special_tokens: bool = False,
        deadline: float | None = None,
        cancel: threading.Event | None = None,
        on_text: Callable[[str], None] | None = None,
    ) -> GenerationOutput:
        """Generate a completion of `prompt_ids` (blocking; call it from a worker thread).

        `adapter` is a request's `model` (None or the base name: base). Sampling follows vLLM: greedy
        at temperature 0, the model's generation config for unset values, a seeded generator per
        request. `deadline` is a `time.monotonic()` value; `cancel` stops it early (EngineTimeout);
        `on_text` receives text deltas as they become final (held back near a possible stop string).
        """
        n_prompt = len(prompt_ids)
        if n_prompt == 0:
            raise bad_request("The prompt is empty.", "messages")
        if n_prompt >= self.max_model_len:
            raise bad_request(
                f"This model's maximum context length is {self.max_model_len} tokens. However, "
                f"your prompt contains {n_prompt} input tokens. Please reduce the length of the "
                "input messages.",
                "input_tokens",
            )
        if max_tokens is not None and max_tokens < 1:
            raise bad_request(f"max_tokens must be at least 1, got {max_tokens}.", "max_tokens")
        if temperature is not None and temperature < 0:
            raise bad_request(f"temperature must be non-negative, got {temperature}.", "temperature")
        if top_p is not None and not 0 < top_p <= 1:
            raise bad_request(f"top_p must be in (0, 1], got {top_p}.", "top_p")
        budget = self.max_model_len - n_prompt
        limit = min(max_tokens, budget) if max_tokens is not None else budget
        defaults = self._gen_defaults
        temp = temperature if temperature is not None else defaults.get("temperature", 0.0)
        sampling = {
            "temperature": float(temp or 0.0),
            "top_p": top_p if top_p is not None else defaults.get("top_p"),
            "top_k": top_k if top_k is not None else defaults.get("top_k"),
            "repetition_penalty": repetition_penalty
            if repetition_penalty is not None
            else defaults.get("repetition_penalty"),
        }
        wait = None if deadline is None else max(0.0, deadline - time.monotonic())
        if not self._lock.acquire(timeout=-1 if wait is None else wait):
            raise EngineTimeout("generation did not start before the deadline (the engine is busy)")
        try:
            if self._model is None:
                raise EngineError("the local engine is not loaded")
            name = self.resolve_model(adapter)
            return self._generate_locked(
                list(prompt_ids),
                name,
                limit,
                sampling,
                seed,
                list(stop or []),
                skip_special_tokens,
                deadline,
                cancel,
                on_text,
            )
        finally:
            self._lock.release()

    def _generate_locked(
        self,
        prompt: list[int],
        adapter: str | None,
        limit: int,
        sampling: dict[str, Any],
        seed: int | None,
        stop: list[str],
        skip_special: bool,
        deadline: float | None,
        cancel: threading.Event | None,
        on_text: Callable[[str], None] | None,
    ) -> GenerationOutput:
        import contextlib

        import torch

        model = self._peft if self._peft is not None else self._model
        if self._peft is not None and adapter is not None:
            self._peft.set_adapter(self._adapters[adapter].key)
            context: Any = contextlib.nullcontext()
        elif self._peft is not None:
            context = self._peft.disable_adapter()
        else:
            context = contextlib.nullcontext()
        gen = torch.Generator(device=self.device)
        gen.manual_seed(seed if seed is not None else secrets.randbits(63))
        generated: list[int] = []
        finish, text, emitted, searched = "length", "", 0, 0
        stop_reason: str | int | None = None
        hold = max((len(s) for s in stop), default=1) - 1
        with context, torch.inference_mode():
            input_ids = torch.tensor([prompt], device=self.device)
            past = None
            while len(generated) < limit:
                if cancel is not None and cancel.is_set():
                    raise EngineTimeout("generation was cancelled")
                if deadline is not None and time.monotonic() > deadline:
                    raise EngineTimeout("generation did not finish before the deadline")
                out = model(input_ids=input_ids, past_key_values=past, use_cache=True, logits_to_keep=1)
                past = out.past_key_values
                token = self._pick(out.logits[0, -1].float(), prompt, generated, sampling, gen)
                generated.append(token)
                if token in self._eos_ids:
                    finish = "stop"
                    stop_reason = None if token == self._primary_eos else token
                    text = self._decode(generated[:-1], skip_special)
                    break
                text = self._decode(generated, skip_special)
                hit = self._find_stop(text, stop, searched)
                searched = len(text)
                if hit is not None:
                    text, stop_reason, finish = text[: hit[0]], hit[1], "stop"
                    break
                if on_text is not None:
                    safe = len(text) - hold
                    while safe > emitted and text[safe - 1] == "\ufffd":
                        safe -= 1  # an incomplete UTF-8 sequence: wait for its next byte
                    if safe > emitted:
                        on_text(text[emitted:safe])
                        emitted = safe
                input_ids = torch.tensor([[token]], device=self.device)
        if on_text is not None and len(text) > emitted:
            on_text(text[emitted:])
        return GenerationOutput(
            text=text,
            finish_reason=finish,
            prompt_tokens=len(prompt),
            completion_tokens=len(generated),
            stop_reason=stop_reason,
        )

    def _decode(self, ids: list[int], skip_special: bool) -> str:
        with self._tok_lock:
            return str(
                self._tokenizer.decode(ids, skip_special_tokens=skip_special, clean_up_tokenization_spaces=False)
            )

    @staticmethod
    def _find_stop(text: str, stop: list[str], searched: int) -> tuple[int, str] | None:
        """The first stop string in the new part of `text` (a few characters back: the old tail may
        have been an incomplete UTF-8 sequence)."""
        best: tuple[int, str] | None = None
        for s in stop:
            if not s:
                continue
            idx = text.find(s, max(0, searched - len(s) - 4))
            if idx >= 0 and (best is None or idx < best[0]):
                best = (idx, s)
        return best

    @staticmethod
    def _pick(
        logits: torch.Tensor, prompt: list[int], generated: list[int], sampling: dict[str, Any], gen: torch.Generator
    ) -> int:
        import torch

        penalty = sampling["repetition_penalty"]
        if penalty and penalty != 1.0:
            seen = torch.tensor(sorted(set(prompt) | set(generated)), device=logits.device)
            values = logits[seen]
            logits[seen] = torch.where(values > 0, values / penalty, values * penalty)
        temperature = sampling["temperature"]
        if temperature < 1e-5:  # vLLM's greedy threshold
            return int(torch.argmax(logits))
        logits = logits / temperature
        top_k = sampling["top_k"]
        if top_k and 0 < top_k < logits.numel():
            kth = torch.topk(logits, top_k).values[-1]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        probs = torch.softmax(logits, dim=-1)
        top_p = sampling["top_p"]
        if top_p is not None and top_p < 1.0:
            sorted_probs, order = torch.sort(probs, descending=True)
            cumulative = torch.cumsum(sorted_probs, dim=-1)
            drop = cumulative - sorted_probs > top_p  # keep the smallest prefix whose mass reaches top_p
            sorted_probs = sorted_probs.masked_fill(drop, 0.0)
            probs = torch.zeros_like(probs).scatter(0, order, sorted_probs)
        return int(torch.multinomial(probs, 1, generator=gen))

    # chat

    async def chat(
        self, request: ChatRequest, *, timeout: float | None = None, cancel: threading.Event | None = None
    ) -> ChatResult:
        """One non-streaming chat completion, shaped exactly like vLLM's (§3.3), in a worker thread.

        Setting `cancel` (or cancelling the awaiting task, which sets it) stops the generation at its
        next token with `EngineTimeout`; the server sets it when the client goes away.
        """
        started = time.perf_counter()
        tool_choice = check_tool_request(request.tools, request.tool_choice)
        model_name = request.model or self.served_name
        self.resolve_model(request.model)
        limit = timeout if timeout is not None else self.timeout
        deadline = None if limit is None else time.monotonic() + limit
        extra = request.extra or {}
        max_tokens = request.max_tokens if request.max_tokens is not None else extra.get("max_completion_tokens")
        stop = request.stop if request.stop is not None else extra.get("stop")
        cancel = cancel if cancel is not None else threading.Event()
        keep_special = self.tool_call_format.keeps_special_tokens

        def work() -> dict[str, Any]:
            prompt = self.encode(self.render_prompt(request.messages, request.tools))
            out = self.generate(
                prompt,
                adapter=request.model,
                max_tokens=max_tokens,
                temperature=request.temperature,
                top_p=request.top_p,
                top_k=extra.get("top_k"),
                repetition_penalty=extra.get("repetition_penalty"),
                seed=request.seed,
                stop=[stop] if isinstance(stop, str) else stop,
                # vLLM's hermes and mistral parsers keep special tokens whenever tools may be called.
                skip_special_tokens=not (request.tools and tool_choice != "none" and keep_special),
                deadline=deadline,
                cancel=cancel,
            )
            return build_chat_completion(
                out.text,
                out.finish_reason,
                model=model_name,
                prompt_tokens=out.prompt_tokens,
                completion_tokens=out.completion_tokens,
                tools=request.tools,
                tool_choice=tool_choice,
                parallel_tool_calls=request.parallel_tool_calls,
                stop_reason=out.stop_reason,
                tool_call_parser=self.tool_call_parser,
            )

        try:
            body = await asyncio.to_thread(work)
        except asyncio.CancelledError:
            cancel.set()
            raise
        choice = body["choices"][0]
        message = dict(choice["message"])
        return ChatResult(
            message=message,
            finish_reason=choice["finish_reason"],
            model=body["model"],
            prompt_tokens=body["usage"]["prompt_tokens"],
            completion_tokens=body["usage"]["completion_tokens"],
            latency_ms=(time.perf_counter() - started) * 1000.0,
            raw=body,
        )
