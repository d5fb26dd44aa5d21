"""Workflow specs and prompt templates: parsing, validation errors, the example files."""

from __future__ import annotations

from pathlib import Path

import pytest

from zmqllm.engines.base import SAMPLING_KEYS
from zmqllm.workflow import TemplateError, WorkflowError, fields, load_workflow, parse_workflow, render
from zmqllm.workflow.settings import SAMPLING_RULES
from zmqllm.workflow.spec import MAX_FAN_OUT_CAP

EXAMPLES = sorted((Path(__file__).parent.parent / "configs" / "workflows").glob("*.toml"))
SOURCE = "wf.toml"


def error(text: str) -> str:
    with pytest.raises(WorkflowError) as info:
        parse_workflow(text, SOURCE)
    message = str(info.value)
    assert "\n" not in message and message.startswith(SOURCE + ": ")
    return message


def steps(*bodies: str, top: str = "") -> str:
    return top + "\n" + "\n".join("[[steps]]\n" + body for body in bodies)


PLAIN = 'name = "draft"\nprompt = "Q: {input}\\nA:"'
LOOP = '''name = "polish"
text = "{input}"
max_rounds = 2
[[steps.stages]]
name = "critique"
prompt = "Text: {text}\\nCritique:"
[[steps.stages]]
name = "revise"
prompt = "Text: {text}\\nCritique: {critique}\\nRevised:"'''


# -- the examples -----------------------------------------------------------------------


def test_the_three_examples_exist() -> None:
    assert [p.stem for p in EXAMPLES] == ["draft-critique-revise", "ensemble", "map-reduce-summary"]


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_validates(path: Path) -> None:
    workflow = load_workflow(path)
    assert workflow.name == path.stem and workflow.description
    assert workflow.source == str(path)
    assert all(step.settings.max_tokens <= 96 for step in workflow.steps)


def test_examples_use_the_features_they_show() -> None:
    by_name = {p.stem: load_workflow(p) for p in EXAMPLES}
    draft, polish = by_name["draft-critique-revise"].steps
    assert polish.kind == "loop" and polish.needs == ("draft",) and polish.until_stage == "critique"
    assert polish.until is not None and polish.until.search("No changes.")
    answer = by_name["ensemble"].steps[0]
    assert (answer.fan_out, answer.merge, answer.distinct_peers) == (3, "vote", True)
    assert answer.settings.temperature == 0.7 and answer.settings.seed is not None
    summary = by_name["map-reduce-summary"].steps[0]
    assert (summary.kind, summary.merge, summary.chunk_chars) == ("split", "llm", 1200)
    assert summary.merge_settings is not None and summary.merge_settings.max_tokens == 96
    assert summary.settings.max_tokens == 64


# -- good specs -------------------------------------------------------------------------


def test_defaults_layer_under_steps_and_stages() -> None:
    workflow = parse_workflow(steps(PLAIN, LOOP.replace('name = "revise"', 'name = "revise"\ntemperature = 0.5'),
                                    top='[defaults]\nmax_tokens = 32\ntemperature = 0.0\nstop = ["\\n"]\n'
                                        'model = "m"\nretries = 3'), SOURCE)
    draft, polish = workflow.steps
    assert draft.settings.max_tokens == 32 and draft.settings.stop == ("\n",) and draft.settings.retries == 3
    assert draft.settings.params() == {"temperature": 0.0}
    assert polish.stages[1].settings.temperature == 0.5 and polish.stages[1].settings.model == "m"
    assert polish.stages[0].settings.temperature == 0.0


def test_name_defaults_to_the_file_stem_and_output_to_the_last_step() -> None:
    workflow = parse_workflow(steps(PLAIN, 'name = "b"\nprompt = "{draft}"'), "some/dir/flow.toml")
    assert workflow.name == "flow" and workflow.output == "b"
    assert workflow.steps[1].needs == ("draft",)


def test_needs_come_from_templates_and_split() -> None:
    workflow = parse_workflow(steps(
        'name = "a"\nprompt = "{input}"', 'name = "b"\nprompt = "{input}"',
        'name = "m"\nsplit = "b"\nchunk_tokens = 50\nprompt = "{a} {chunk}"\nmerge = "concat"',
    ), SOURCE)
    assert workflow.steps[2].needs == ("a", "b")


def test_escaped_braces_are_not_variables() -> None:
    workflow = parse_workflow(steps('name = "j"\nprompt = "JSON like {{\\"a\\": 1}} for {input}"'), SOURCE)
    assert workflow.steps[0].needs == ()


def test_sampling_rules_match_the_engine_keys() -> None:
    assert {key: kind for key, (kind, *_rest) in SAMPLING_RULES.items()} == SAMPLING_KEYS


def test_load_reports_a_missing_file_on_one_line(tmp_path: Path) -> None:
    with pytest.raises(WorkflowError, match=r"^.*nope\.toml: cannot read workflow: "):
        load_workflow(tmp_path / "nope.toml")


# -- bad specs: one line naming the step and key ------------------------------------------

BAD = {
    "unknown step in template": (
        steps(PLAIN, 'name = "b"\nprompt = "{drafts}"'),
        "step 'b': key 'prompt': unknown variable {drafts} (did you mean {draft}?)"),
    "cycle": (
        steps('name = "a"\nprompt = "{b}"', 'name = "b"\nprompt = "{c}"', 'name = "c"\nprompt = "{a}"'),
        "step 'a': key 'prompt': cycle a -> b -> c -> a"),
    "self reference": (
        steps('name = "a"\nprompt = "{input} {a}"'), "step 'a': key 'prompt': a step cannot use its own output {a}"),
    "split prompt without chunk": (
        steps('name = "m"\nsplit = "input"\nchunk_chars = 10\nprompt = "{input}"\nmerge = "concat"'),
        "step 'm': key 'prompt': a split step's prompt must use {chunk}"),
    "merge prompt without branches": (
        steps('name = "f"\nprompt = "{input}"\nfan_out = 2\nmerge = "llm"\nmerge_prompt = "Pick:"'),
        "step 'f': key 'merge_prompt': must use {branches}"),
    "chunk outside a split": (
        steps('name = "a"\nprompt = "{chunk}"'), "step 'a': key 'prompt': {chunk} is only available in the prompt"),
    "bad merge name": (
        steps('name = "f"\nprompt = "{input}"\nfan_out = 2\nmerge = "votes"'),
        "step 'f': key 'merge': must be one of concat, vote, llm, got string 'votes' (did you mean 'vote'?)"),
    "fan_out beyond the default limit": (
        steps('name = "f"\nprompt = "{input}"\nfan_out = 17\nmerge = "vote"'),
        "step 'f': key 'fan_out': must be between 1 and max_fan_out (16), got integer 17"),
    "fan_out beyond a raised limit": (
        steps('name = "f"\nprompt = "{input}"\nfan_out = 33\nmerge = "vote"', top="max_fan_out = 32"),
        "step 'f': key 'fan_out': must be between 1 and max_fan_out (32)"),
    "max_fan_out beyond the hard cap": (
        steps(PLAIN, top=f"max_fan_out = {MAX_FAN_OUT_CAP + 1}"),
        f"key 'max_fan_out': must be between 1 and {MAX_FAN_OUT_CAP} (the hard cap)"),
    "fan_out as a string": (
        steps('name = "f"\nprompt = "{input}"\nfan_out = "3"\nmerge = "vote"'),
        "step 'f': key 'fan_out': must be an integer, got string '3'"),
    "temperature as a string": (
        steps(PLAIN + '\ntemperature = "hot"'), "step 'draft': key 'temperature': must be a number, got string 'hot'"),
    "negative temperature in defaults": (
        steps(PLAIN, top="[defaults]\ntemperature = -1"), "[defaults]: key 'temperature': must be >= 0, got float -1.0"),
    "stop as a string": (
        steps(PLAIN + '\nstop = "\\n"'), "step 'draft': key 'stop': must be a list of non-empty strings"),
    "optional as a string": (
        steps(PLAIN + '\noptional = "yes"'), "step 'draft': key 'optional': must be a boolean"),
    "retries beyond the limit": (
        steps(PLAIN + "\nretries = 11"), "step 'draft': key 'retries': must be between 0 and 10, got integer 11"),
    "steps not tables": ('steps = ["a"]', "key 'steps': must be an array of tables"),
    "no steps": ('name = "x"', "key 'steps': at least one [[steps]] table is required"),
    "unknown top-level key": (steps(PLAIN, top='ouput = "draft"'), "wf.toml: unknown key 'ouput' (did you mean 'output'?)"),
    "unknown step key": (
        steps('name = "a"\npromt = "x"'), "step #1: unknown key 'promt' (did you mean 'prompt'?)"),
    "unknown defaults key": (
        steps(PLAIN, top="[defaults]\ntemprature = 0.0"), "[defaults]: unknown key 'temprature' (did you mean 'temperature'?)"),
    "unknown stage key": (
        steps(LOOP.replace('name = "revise"', 'name = "revise"\nmax_token = 5')),
        "step 'polish' stage #2: unknown key 'max_token' (did you mean 'max_tokens'?)"),
    "duplicate step names": (steps(PLAIN, PLAIN), "step 'draft': key 'name': duplicate step name (steps #1 and #2)"),
    "missing step name": (steps('prompt = "x"'), "step #1: key 'name': required"),
    "step named like a built-in variable": (
        steps('name = "input"\nprompt = "x"'), "step #1: key 'name': 'input' is a built-in template variable"),
    "step name that cannot be a variable": (
        steps('name = "my-step"\nprompt = "x"'), "step #1: key 'name': step name must be letters, digits and '_'"),
    "missing prompt": (steps('name = "a"'), "step 'a': key 'prompt': required"),
    "unknown output": (steps(PLAIN, top='output = "drafts"'), "key 'output': no step named 'drafts' (did you mean 'draft'?)"),
    "merge on a plain step": (
        steps(PLAIN + '\nmerge = "vote"'), "step 'draft': key 'merge': applies only to a fan_out or split step"),
    "fan_out without merge": (
        steps('name = "f"\nprompt = "{input}"\nfan_out = 3'), "step 'f': key 'merge': required for fan_out > 1"),
    "fan_out with split": (
        steps('name = "m"\nsplit = "input"\nfan_out = 2\nchunk_chars = 9\nprompt = "{chunk}"\nmerge = "concat"'),
        "step 'm': key 'fan_out': cannot be combined with 'split'"),
    "chunk size without split": (
        steps(PLAIN + "\nchunk_chars = 100"), "step 'draft': key 'chunk_chars': applies only to a split step"),
    "both chunk sizes": (
        steps('name = "m"\nsplit = "input"\nchunk_chars = 9\nchunk_tokens = 9\nprompt = "{chunk}"\nmerge = "concat"'),
        "step 'm': key 'chunk_tokens': cannot be combined with 'chunk_chars'"),
    "no chunk size": (
        steps('name = "m"\nsplit = "input"\nprompt = "{chunk}"\nmerge = "concat"'),
        "step 'm': key 'chunk_chars': required for a split step"),
    "split of an unknown step": (
        steps('name = "m"\nsplit = "imput"\nchunk_chars = 9\nprompt = "{chunk}"\nmerge = "concat"'),
        "step 'm': key 'split': must be 'input' or the name of another step, got string 'imput' (did you mean 'input'?)"),
    "split without merge": (
        steps('name = "m"\nsplit = "input"\nchunk_chars = 9\nprompt = "{chunk}"'),
        "step 'm': key 'merge': required for a split step"),
    "llm merge without merge_prompt": (
        steps('name = "f"\nprompt = "{input}"\nfan_out = 2\nmerge = "llm"'),
        "step 'f': key 'merge_prompt': required when merge = 'llm'"),
    "merge_prompt with vote": (
        steps('name = "f"\nprompt = "{input}"\nfan_out = 2\nmerge = "vote"\nmerge_prompt = "{branches}"'),
        "step 'f': key 'merge_prompt': applies only to merge = 'llm'"),
    "separator with vote": (
        steps('name = "f"\nprompt = "{input}"\nfan_out = 2\nmerge = "vote"\nseparator = ","'),
        "step 'f': key 'separator': applies only to merge = 'concat'"),
    "distinct peers on a pinned step": (
        steps('name = "f"\nprompt = "{input}"\nfan_out = 2\nmerge = "vote"\npeer = "a"\ndistinct_peers = true'),
        "step 'f': key 'distinct_peers': cannot be combined with 'peer'"),
    "unescaped brace": (
        steps('name = "j"\nprompt = "JSON: {\\"a\\": 1}"'), "step 'j': key 'prompt': bad placeholder"),
    "stray closing brace": (
        steps('name = "j"\nprompt = "a } b"'), "step 'j': key 'prompt': unmatched '}' at character 3 (write '}}'"),
    "invalid TOML": ("[[steps]\n", "wf.toml: invalid TOML: "),
    "loop without max_rounds": (
        steps(LOOP.replace("max_rounds = 2\n", "")), "step 'polish': key 'max_rounds': required for a loop step"),
    "loop with too many rounds": (
        steps(LOOP.replace("max_rounds = 2", "max_rounds = 21")), "step 'polish': key 'max_rounds': must be between 1 and 20"),
    "loop without text": (steps(LOOP.replace('text = "{input}"\n', "")), "step 'polish': key 'text': required"),
    "loop with empty stages": (
        steps('name = "p"\ntext = "x"\nmax_rounds = 2\nstages = []'), "step 'p': key 'stages': a loop step needs at least one"),
    "loop with a prompt": (
        steps(LOOP.replace("max_rounds = 2", 'max_rounds = 2\nprompt = "x"')),
        "step 'polish': key 'prompt': does not apply to a loop step"),
    "loop key on a plain step": (
        steps(PLAIN + "\nmax_rounds = 3"), "step 'draft': key 'max_rounds': applies only to a loop step"),
    "loop with a bad pattern": (
        steps(LOOP.replace("max_rounds = 2", 'max_rounds = 2\nuntil = "(unclosed"')),
        "step 'polish': key 'until': bad regular expression: "),
    "loop until an unknown stage": (
        steps(LOOP.replace("max_rounds = 2", 'max_rounds = 2\nuntil = "ok"\nuntil_stage = "critic"')),
        "step 'polish': key 'until_stage': no stage named 'critic' in this loop (did you mean 'critique'?)"),
    "loop until_stage without until": (
        steps(LOOP.replace("max_rounds = 2", 'max_rounds = 2\nuntil_stage = "critique"')),
        "step 'polish': key 'until_stage': needs 'until'"),
    "stage using a later stage": (
        steps(LOOP.replace('prompt = "Text: {text}\\nCritique:"', 'prompt = "{text} {revise}"')),
        "step 'polish' stage 'critique': key 'prompt': stage 'revise' runs after this one in a round"),
    "stage using its own output": (
        steps(LOOP.replace('prompt = "Text: {text}\\nCritique:"', 'prompt = "{text} {critique}"')),
        "step 'polish' stage 'critique': key 'prompt': a stage cannot use its own output {critique}"),
    "stage misspelling a variable": (
        steps(LOOP.replace("{critique}\\nRevised", "{critque}\\nRevised")),
        "step 'polish' stage 'revise': key 'prompt': unknown variable {critque} (did you mean {critique}?)"),
    "no stage reads text": (
        steps(LOOP.replace("{text}", "{input}")), "step 'polish': key 'stages': no stage uses {text}"),
    "stage named like a step": (
        steps(PLAIN, LOOP.replace('name = "critique"', 'name = "draft"').replace("{critique}", "{draft}")),
        "step 'polish' stage 'draft': key 'name': 'draft' is also a step name"),
    "duplicate stage names": (
        steps(LOOP.replace('name = "revise"', 'name = "critique"').replace("{critique}", "")),
        "step 'polish' stage 'critique': key 'name': duplicate stage name"),
    "text variable outside a loop": (
        steps('name = "a"\nprompt = "{text}"'), "step 'a': key 'prompt': {text} is only available in the stages of a loop"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_spec_gives_one_clear_line(case: str) -> None:
    text, expected = BAD[case]
    message = error(text)
    assert expected in message, message


def test_mapping_input_is_validated_like_text() -> None:
    with pytest.raises(WorkflowError, match=r"^mem: step 'a': key 'max_tokens': must be >= 1, got integer 0$"):
        parse_workflow({"steps": [{"name": "a", "prompt": "{input}", "max_tokens": 0}]}, "mem")


# -- templates --------------------------------------------------------------------------


def test_fields_lists_placeholders_but_not_escaped_braces() -> None:
    assert fields("{a} and {b_2} but {{c}} and {{{d}}}") == {"a", "b_2", "d"}


def test_render_substitutes_once_and_unescapes() -> None:
    assert render("{{x}} {a}-{a} {{{b}}}", {"a": "{b}", "b": "B"}) == "{x} {b}-{b} {B}"


@pytest.mark.parametrize("template, message", [
    ("{a", "unmatched '{' at character 1"),
    ("a}", "unmatched '}' at character 2"),
    ("{a.b}", "bad placeholder '{a.b}'"),
    ("{ a }", "bad placeholder '{ a }'"),
    ("{}", "bad placeholder '{}'"),
])
def test_malformed_templates_are_rejected(template: str, message: str) -> None:
    with pytest.raises(TemplateError, match=message.replace("{", r"\{").replace("}", r"\}").replace(".", r"\.")):
        fields(template)
    with pytest.raises(TemplateError):
        render(template, {"a": "x"})


def test_render_names_a_missing_value() -> None:
    with pytest.raises(TemplateError, match=r"unknown variable \{b\}"):
        render("{a}{b}", {"a": "x"})
