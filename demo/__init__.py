"""The laptop demo, an application of everything (`rrr demo ...`, `make demo`).

`catalog` (twelve everyday tools with deterministic fakes), `phrases` and `corpus` (synthetic tasks and
reflect/retry examples), `sft` (supervised training of the base policy from scratch), `base_policy`
(build, recipe, splits, evaluation of the shipped policy in `policy/`), `servers` (the engine and API
processes), `client` (SDK traffic), `run` (the closed loop, stage by stage), `report` and `chart`.
"""
