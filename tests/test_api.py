"""The contract layer (longcat/api): torch-free, and its small copies of diffusers' rules held equal to them."""

from __future__ import annotations

import subprocess
import sys

import pytest

from longcat.api import prompts, sizes

HEAVY = ("torch", "diffusers", "transformers", "peft")


def test_gateway_and_client_import_without_the_model_stack():
    """The public process and the thin client: importing them leaves torch & co. out of sys.modules."""
    code = ("import sys, services.gateway.server, longcat.client, longcat.client.datasets, longcat.api.edit, "
            "longcat.api.training, longcat.api.datasets, longcat.api.edit_proto, longcat.cli.main; "
            f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"loaded: {out.stdout.strip()}"


def test_a_model_module_still_loads_torch():
    """The check above can fail: the same probe sees torch where it is imported."""
    code = f"import sys, longcat.engine.engine; print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert "torch" in out.stdout.split(",")


@pytest.mark.parametrize("area", [1024 * 1024, 512 * 512, 300 * 200, 2048 * 2048])
@pytest.mark.parametrize("ratio", [1.0, 4 / 3, 3 / 4, 16 / 9, 0.37, 2.5, 1 / 7])
def test_size_rule_equals_diffusers(area, ratio):
    from diffusers.pipelines.longcat_image.pipeline_longcat_image_edit import calculate_dimensions

    assert sizes.calculate_dimensions(area, ratio) == calculate_dimensions(area, ratio)


@pytest.mark.parametrize("prompt", [
    "make the sky purple", "write 'Hello' on the board", 'say "hi there" and ‘x’ and “y”', "it's Bob's 'cat'",
    "", "''", "no 'closing quote", "it's 'cat' and it's 'dog'", "'don't", "a'b'c 'd'",
])
def test_split_quotation_equals_diffusers(prompt):
    """Equal to diffusers' wherever diffusers keeps the text (at most one distinct word like "it's"); with
    more, diffusers rewrites the words into copies of one of them (which one depends on PYTHONHASHSEED), ours
    keeps them as written and quotes the same spans."""
    from diffusers.pipelines.longcat_image.pipeline_longcat_image_edit import split_quotation

    ours, theirs = prompts.split_quotation(prompt), split_quotation(prompt)
    if len(set(prompts._WORD_INTERNAL_QUOTE.findall(prompt))) <= 1:
        assert ours == theirs
    else:
        assert "".join(p for p, _ in ours) == prompt
        assert [q for _, q in ours] == [q for _, q in theirs]


def test_split_quotation_is_linear():
    """A 200,000-character prompt of distinct contractions and unclosed quotes splits in well under a second
    (diffusers' placeholders grow with each distinct word: minutes). Bounded by work, not timed: the text comes
    back whole."""
    big = " ".join(f"{chr(97 + i % 26)}{chr(97 + i // 26 % 26)}'x" for i in range(40000)) + " '‘“" * 1000
    parts = prompts.split_quotation(big)
    assert "".join(p for p, _ in parts) == big


def test_gateway_tokenizer_counts_the_pipeline_tokenizers_ids(tiny_model_path, tiny_components):
    """tokenizers on tokenizer.json (the gateway) == the pipeline's Qwen2Tokenizer (the encoder), id for id."""
    fast = prompts.load_prompt_tokenizer(tiny_model_path)
    for prompt in ["make the sky purple", "write 'Hello World' on it <|im_end|>", "ünïcødé 漢字 🙂 " * 20,
                   "it's \"quoted\" text"]:
        assert prompts.prompt_token_ids(fast, prompt) == prompts.prompt_token_ids(tiny_components.tokenizer, prompt)
    assert prompts.prompt_token_ids(fast, "abc")  # not vacuous


def test_tokenizer_file_errors_name_the_model(tmp_path):
    from longcat.errors import NotFound

    with pytest.raises(NotFound) as exc:
        prompts.tokenizer_file(str(tmp_path))
    assert exc.value.field == "model"


def test_prompt_check_stops_once_over_the_limit(tiny_model_path):
    """A long quoted span is one tokenizer call per character: the check stops past 512 ids, and truncation
    keeps exactly the first 512 ids of the whole tokenization."""
    from longcat.errors import PromptTooLong

    fast = prompts.load_prompt_tokenizer(tiny_model_path)
    quoted = "write '" + "ab" * 4000 + "' now"
    with pytest.raises(PromptTooLong, match="over 512"):
        prompts.check_prompt_length(fast, quoted)
    assert prompts.check_prompt_length(fast, quoted, truncate=True) == prompts.prompt_token_ids(fast, quoted)[:512]
