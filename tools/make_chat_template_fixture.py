#!/usr/bin/env python3
"""Writes tests/fixtures/chat_template/*.json: chat templates, conversations and the prompt text
that transformers' `apply_chat_template(..., tokenize=False)` renders for them, which
tests/chat_template.rs compares byte for byte with the project's renderer.

- smollm2.json: SmolLM2-135M-Instruct's own template and special tokens, read from the GGUF that
  tools/fetch_smollm2.sh fetches (no hub download).
- features.json: a template written here to use what Hugging Face templates use beyond
  SmolLM2's (raise_exception, loop controls, namespace, slicing, Python string methods, tojson,
  bos/eos tokens, multi-line blocks under trim_blocks/lstrip_blocks), rendered the same way.

Run on the CPU (no torch needed):
  python3 -m venv /tmp/ct && /tmp/ct/bin/pip install transformers==4.57.1 jinja2 gguf
  bash tools/fetch_smollm2.sh
  /tmp/ct/bin/python tools/make_chat_template_fixture.py
"""

import argparse
import json
import sys
from pathlib import Path

import gguf
import jinja2
import tokenizers
import transformers
from tokenizers.models import WordLevel
from transformers import PreTrainedTokenizerFast

ROOT = Path(__file__).resolve().parent.parent


def field(reader, key):
    """A GGUF metadata value: a string, an int, or a list of strings."""
    f = reader.fields.get(key)
    if f is None:
        return None
    if f.types and f.types[0] == gguf.GGUFValueType.ARRAY:
        return [bytes(f.parts[i]).decode("utf-8") for i in f.data]
    value = f.parts[f.data[0]]
    if f.types[0] == gguf.GGUFValueType.STRING:
        return bytes(value).decode("utf-8")
    return int(value[0])


def gguf_tokenizer(path):
    """transformers' tokenizer with the GGUF's chat template and special tokens. Rendering with
    tokenize=False reads only the template and special_tokens_map, so the vocabulary is kept as
    a plain word list (transformers' own GGUF loader needs torch)."""
    reader = gguf.GGUFReader(path)
    tokens = field(reader, "tokenizer.ggml.tokens")
    vocab = {t: i for i, t in enumerate(tokens)}
    special = {}
    for name, key in [
        ("bos_token", "tokenizer.ggml.bos_token_id"),
        ("eos_token", "tokenizer.ggml.eos_token_id"),
        ("unk_token", "tokenizer.ggml.unknown_token_id"),
        ("pad_token", "tokenizer.ggml.padding_token_id"),
    ]:
        i = field(reader, key)
        if i is not None:
            special[name] = tokens[i]
    template = field(reader, "tokenizer.chat_template")
    backend = tokenizers.Tokenizer(WordLevel(vocab, unk_token=special.get("unk_token")))
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, chat_template=template, **special)
    return tok, template, special


def render_cases(tok, conversations):
    cases = []
    for name, messages, add_generation_prompt in conversations:
        case = {
            "name": name,
            "messages": messages,
            "add_generation_prompt": add_generation_prompt,
        }
        try:
            case["rendered"] = tok.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=add_generation_prompt
            )
        except jinja2.exceptions.TemplateError as e:
            case["error"] = str(e)
        cases.append(case)
    return cases


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


def system(text):
    return {"role": "system", "content": text}


SMOLLM2_CONVERSATIONS = [
    ("user only, generation prompt", [user("What is the capital of France?")], True),
    ("user only, no generation prompt", [user("What is the capital of France?")], False),
    (
        "system and user",
        [system("You are a terse assistant."), user("Name a prime number.")],
        True,
    ),
    (
        "multi-turn",
        [
            system("Answer in one word."),
            user("Colour of the sky?"),
            assistant("Blue."),
            user("And of grass?"),
        ],
        True,
    ),
    (
        "multi-turn ending with the assistant, no generation prompt",
        [user("Hi"), assistant("Hello! How can I help?"), user("Tell me a joke."), assistant(" Why did the chicken cross the road? ")],
        False,
    ),
    (
        "whitespace, newlines and unicode kept as they are",
        [user("  Übersetze:\n\t«ça va?» 😀  \n")],
        True,
    ),
    ("empty user message", [user("")], True),
]

# Uses what Hugging Face chat templates use (Llama-2/3, Mistral, Qwen, Zephyr...): whitespace
# control, trim_blocks/lstrip_blocks on multi-line blocks, raise_exception, loop controls,
# namespace, slicing (also with a negative step), Python string methods, filters, tojson with
# Python's spacing and options, bos/eos tokens, `is defined`, `tools is none`.
FEATURES_TEMPLATE = """{{- bos_token }}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content'] | trim %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set system_message = 'You are helpful.' %}
    {%- set loop_messages = messages %}
{%- endif %}
{%- if tools is not none %}{{ raise_exception('no tools here') }}{% endif %}
<<SYS>>{{ system_message.upper() }}<</SYS>>
{% set ns = namespace(turns=0, last_user='') %}
{% for message in loop_messages %}
    {% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
        {{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}
    {% endif %}
    {% if message['content'].startswith('#skip') %}
        {% continue %}
    {% endif %}
    {% if message['content'].endswith('#stop') %}
        {% break %}
    {% endif %}
    {% set ns.turns = ns.turns + 1 %}
    {% if message['role'] == 'user' %}
        {% set ns.last_user = message['content'] %}
[INST] {{ message['content'].strip() }} [/INST]
    {% else %}
 {{ message['content'].split('</think>')[-1].lstrip('\\n') | trim }}{{ eos_token }}
    {% endif %}
{% endfor %}
{{- '\\n(turns: ' ~ ns.turns ~ ', first: ' ~ (loop_messages | first)['role'] ~ ', reversed roles: ' ~ (loop_messages[::-1] | map(attribute='role') | join(',')) ~ ')' }}
{{ '\\nlast user words: ' ~ ns.last_user.split() | length ~ ', title: ' ~ ns.last_user.title() ~ ', replaced: ' ~ ns.last_user.replace('a', 'A') }}
{{ '\\njson: ' ~ (loop_messages | last) | tojson }}
{{ '\\njson indent: ' ~ {'role': 'x', 'n': [1, 2.5, none, true], 'é': '"<>'} | tojson(indent=2) }}
{{ '\\njson sorted ascii: ' ~ {'b': 1, 'a': 'é'} | tojson(sort_keys=true, ensure_ascii=true) }}
{% if date_string is defined %}{{ date_string }}{% endif %}
{%- if add_generation_prompt %}
[ANSWER]
{%- endif %}
"""

FEATURES_CONVERSATIONS = [
    ("system, user, generation prompt", [system("  be brief  "), user("What is a cat?")], True),
    (
        "multi-turn with think tags, skip and no system",
        [
            user("Hi there, a friend asked a question"),
            assistant("<think>hmm</think>\n\nHello!"),
            user("#skip this one"),
            assistant("ok"),
            user("Last question, again"),
        ],
        False,
    ),
    ("break stops the loop", [user("one"), assistant("two #stop"), user("three")], True),
    ("roles that do not alternate raise", [user("a"), user("b")], True),
]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gguf", default=ROOT / "models/SmolLM2-135M-Instruct.Q4_1.gguf", type=Path)
    ap.add_argument("--out", default=ROOT / "tests/fixtures/chat_template", type=Path)
    args = ap.parse_args()
    if not args.gguf.is_file():
        sys.exit(f"{args.gguf}: not found (run bash tools/fetch_smollm2.sh)")
    args.out.mkdir(parents=True, exist_ok=True)
    versions = {
        "transformers": transformers.__version__,
        "jinja2": jinja2.__version__,
        "tokenizers": tokenizers.__version__,
        "python": sys.version.split()[0],
    }

    tok, template, special = gguf_tokenizer(str(args.gguf))
    smollm2 = {
        "source": f"{args.gguf.name}: tokenizer.chat_template and tokenizer.ggml.*_token_id",
        "generated_with": versions,
        "chat_template": template,
        "special_tokens": special,
        "cases": render_cases(tok, SMOLLM2_CONVERSATIONS),
    }
    features_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok.backend_tokenizer,
        chat_template=FEATURES_TEMPLATE,
        bos_token="<s>",
        eos_token="</s>",
        unk_token=special.get("unk_token"),
    )
    features = {
        "source": "written in tools/make_chat_template_fixture.py (FEATURES_TEMPLATE)",
        "generated_with": versions,
        "chat_template": FEATURES_TEMPLATE,
        "special_tokens": {"bos_token": "<s>", "eos_token": "</s>", "unk_token": special.get("unk_token")},
        "cases": render_cases(features_tok, FEATURES_CONVERSATIONS),
    }
    for name, doc in [("smollm2.json", smollm2), ("features.json", features)]:
        path = args.out / name
        path.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"wrote {path} ({len(doc['cases'])} cases)")


if __name__ == "__main__":
    main()
