"""The operator's verifier policy: what judges a request, whatever the client sends.

Configured in the server's settings (``verifiers:`` in the YAML file named by ``RRR_CONFIG``, or
``RRR_VERIFIERS`` as JSON)::

    verifiers:
      default: schema                      # every request
      client: add                          # a client's rrr.verifier adds checks ("none": refused)
      tools:                               # per tool: judged on that tool's calls only
        get_weather: [schema, grounded]
        issue_refund: [schema, {plugin: acme.refunds}]
        book_flight: [schema, {webhook: booking}, {rules: ["check_in < check_out"]}]
      webhooks:
        booking: {url: "https://checks.internal/booking", timeout_s: 3, api_key_env: BOOKING_KEY,
                  rerunnable: false}
      plugins: [acme.audit]                # plugins a client may name too (those under tools are enabled)

An entry is a verifier spec (``tools.verifiers.specs``) or a short form: a name (``schema``,
``grounded``...), ``{plugin: NAME}``, ``{webhook: NAME}``, ``{rules: [...]}``, ``{grounded: {arguments:
[...]}}``, or a list (all must pass). ``VerifierPolicy.parse`` checks everything at startup — plugin
names installed, webhooks declared, rules parsed — and a ``PolicyError`` names the key that is wrong
(``verifiers.tools.issue_refund[1]``). ``spec_for`` gives the spec that judges a request offering some
tools: the default plus a ``for_tool`` part per offered tool the policy names; ``with_client`` adds
a client's spec (never removing a check). The result is stored on the episode, so the learner
re-runs exactly what judged it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Literal

from tools.verifiers import plugin
from tools.verifiers.specs import SCHEMA, VerifierContext, VerifierSpec
from tools.verifiers.webhook import Webhook

ClientMode = Literal["add", "none"]
_KEYS = ("default", "client", "tools", "webhooks", "plugins")
_WEBHOOK_KEYS = ("url", "timeout_s", "api_key_env", "rerunnable", "failures_to_open", "open_s")


class PolicyError(ValueError):
    """A policy that cannot be used; the message names the key that is wrong."""


def _expand(entry: Any, webhooks: dict[str, Webhook], where: str) -> dict[str, Any]:  # noqa: C901 (one short form each)
    if isinstance(entry, list):
        if not entry:
            raise PolicyError(f"{where}: an empty list judges nothing")
        parts = [_expand(item, webhooks, f"{where}[{i}]") for i, item in enumerate(entry)]
        return parts[0] if len(parts) == 1 else {"type": "all", "of": parts}
    if isinstance(entry, str):
        return {"type": entry}
    if not isinstance(entry, dict):
        raise PolicyError(f"{where}: a verifier is a name, a list or an object, not {type(entry).__name__}")
    if "type" in entry:
        spec = dict(entry)
    elif len(entry) == 1 and "plugin" in entry:
        spec = {"type": "plugin", "name": entry["plugin"]}
    elif len(entry) == 1 and "webhook" in entry:
        spec = {"type": "webhook", "name": entry["webhook"]}
    elif len(entry) == 1 and "rules" in entry:
        spec = {"type": "rules", "rules": entry["rules"]}
    elif len(entry) == 1 and "grounded" in entry:
        options = entry["grounded"] or {}
        if not isinstance(options, dict):
            raise PolicyError(f"{where}.grounded: options are an object (arguments, ignore)")
        spec = {"type": "grounded", **options}
    else:
        raise PolicyError(f"{where}: use a verifier spec with a type, or one of plugin, webhook, rules, grounded")
    if spec.get("type") == "webhook":
        hook = webhooks.get(spec.get("name"))  # type: ignore[arg-type]
        if hook is None:
            raise PolicyError(f"{where}: webhook {spec.get('name')!r} is not declared under verifiers.webhooks")
        spec["rerunnable"] = hook.rerunnable
    return spec


def _webhook(name: Any, raw: Any, where: str) -> Webhook:
    if not isinstance(name, str) or not name:
        raise PolicyError(f"{where}: webhook names are non-empty strings")
    if not isinstance(raw, dict) or "url" not in raw:
        raise PolicyError(f"{where}.{name}: a webhook needs at least a url")
    unknown = sorted(set(raw) - set(_WEBHOOK_KEYS))
    if unknown:
        raise PolicyError(f"{where}.{name}: unknown key {unknown[0]!r} (a webhook takes {', '.join(_WEBHOOK_KEYS)})")
    key = None
    if raw.get("api_key_env") is not None:
        key = os.environ.get(str(raw["api_key_env"]))
        if not key:
            raise PolicyError(f"{where}.{name}.api_key_env: the variable {raw['api_key_env']!r} is not set")
    try:
        return Webhook(
            name=name,
            url=str(raw["url"]),
            timeout_s=float(raw.get("timeout_s", 5.0)),
            api_key=key,
            rerunnable=bool(raw.get("rerunnable", False)),
            failures_to_open=int(raw.get("failures_to_open", 5)),
            open_s=float(raw.get("open_s", 30.0)),
        )
    except (TypeError, ValueError) as exc:
        raise PolicyError(f"{where}.{name}: {exc}") from None


def _plugins_in(spec: VerifierSpec) -> set[str]:
    return {leaf.params["name"] for leaf in spec.leaves() if leaf.kind == "plugin"}


def _check_plugins(names: set[str], where: str) -> None:
    for name in sorted(names):
        try:
            plugin.load_plugin(name)
        except ValueError as exc:
            raise PolicyError(f"{where}: {exc}") from None


def _all(parts: list[VerifierSpec]) -> VerifierSpec:
    unique: list[VerifierSpec] = []
    for part in parts:
        for piece in part.parts if part.kind == "all" else (part,):
            if piece.key() not in {u.key() for u in unique}:
                unique.append(piece)
    return unique[0] if len(unique) == 1 else VerifierSpec(kind="all", parts=tuple(unique))


@dataclass(frozen=True)
class VerifierPolicy:
    """The parsed policy (module docstring). ``VerifierPolicy()`` is rrr's default: schema on everything."""

    default: VerifierSpec = SCHEMA
    tools: dict[str, VerifierSpec] = field(default_factory=dict)
    client: ClientMode = "add"
    context: VerifierContext = field(default_factory=lambda: VerifierContext(plugins=frozenset()))

    @classmethod
    def parse(cls, data: Any, *, where: str = "verifiers") -> VerifierPolicy:
        """Validate a policy mapping; ``PolicyError`` names the wrong key (prefixed by ``where``)."""
        if data is None:
            return cls()
        if not isinstance(data, dict):
            raise PolicyError(f"{where}: a policy is a mapping with {', '.join(_KEYS)}")
        unknown = sorted(set(data) - set(_KEYS))
        if unknown:
            raise PolicyError(f"{where}.{unknown[0]}: unknown key (a policy takes {', '.join(_KEYS)})")
        raw_hooks = data.get("webhooks") or {}
        if not isinstance(raw_hooks, dict):
            raise PolicyError(f"{where}.webhooks: a mapping of webhook names to url, timeout_s, ...")
        hooks = {name: _webhook(name, raw, f"{where}.webhooks") for name, raw in raw_hooks.items()}

        def spec(entry: Any, at: str) -> VerifierSpec:
            try:
                return VerifierSpec.parse(_expand(entry, hooks, at))
            except PolicyError:
                raise
            except (ValueError, TypeError) as exc:
                raise PolicyError(f"{at}: {exc}") from None

        default = spec(data.get("default", "schema"), f"{where}.default")
        raw_tools = data.get("tools") or {}
        if not isinstance(raw_tools, dict):
            raise PolicyError(f"{where}.tools: a mapping of tool names to verifiers")
        tools = {str(name): spec(entry, f"{where}.tools.{name}") for name, entry in raw_tools.items()}
        client = data.get("client", "add")
        if client not in ("add", "none"):
            raise PolicyError(f"{where}.client: 'add' (a client's rrr.verifier adds checks) or 'none' (refused)")
        listed = data.get("plugins") or []
        if not isinstance(listed, list) or not all(isinstance(p, str) for p in listed):
            raise PolicyError(f"{where}.plugins: a list of plugin names")
        plugins = set(listed) | _plugins_in(default)
        for name, tool_spec in tools.items():
            _check_plugins(_plugins_in(tool_spec), f"{where}.tools.{name}")
            plugins |= _plugins_in(tool_spec)
        _check_plugins(plugins, f"{where}.plugins")
        return cls(default, tools, client, VerifierContext(webhooks=hooks, plugins=frozenset(plugins)))

    def spec_for(self, offered: list[str]) -> VerifierSpec:
        """The spec that judges a request offering these tools (the default, then each tool's part)."""
        parts = [self.default]
        for name in dict.fromkeys(offered):
            if name in self.tools:
                parts.append(VerifierSpec(kind="for_tool", parts=(self.tools[name],), params={"tool": name}))
        return _all(parts)

    def check_client(self, client: VerifierSpec) -> VerifierSpec:
        """A client's spec as the policy allows it: ValueError if refused; webhook leaves take the
        policy's ``rerunnable`` (a client names a webhook, it does not describe one)."""
        if self.client == "none":
            raise ValueError("this server's verifier policy does not accept a client's verifier")
        for leaf in client.leaves():
            if leaf.kind == "plugin" and leaf.params["name"] not in (self.context.plugins or ()):
                raise ValueError(f"plugin {leaf.params['name']!r} is not enabled by this server's verifier policy")
            if leaf.kind == "webhook":
                hook = self.context.webhooks.get(leaf.params["name"])
                if hook is None:
                    raise ValueError(f"webhook {leaf.params['name']!r} is not declared by this server's policy")
                leaf.params["rerunnable"] = hook.rerunnable
        return client

    def with_client(self, base: VerifierSpec, client: VerifierSpec | None) -> VerifierSpec:
        """``base`` (``spec_for``) plus the client's checks; a check is never removed."""
        return base if client is None else _all([base, self.check_client(client)])

    def describe(self) -> dict[str, Any]:
        """What ``GET /v1/verifiers`` shows (no keys)."""
        return {
            "default": self.default.to_json(),
            "client": self.client,
            "tools": {name: spec.to_json() for name, spec in sorted(self.tools.items())},
            "webhooks": {name: hook.describe() for name, hook in sorted(self.context.webhooks.items())},
            "plugins": sorted(self.context.plugins or ()),
        }
