"""``rlstack data inspect FILE [--recipe R] [key.path=value ...]``: what a recipe makes of a data file.

Prints the row count, the token lengths of the rendered prompts, one rendered prompt,
and the keyword fields a reward function will receive for it.
"""

import argparse
import sys

from reward.api import OPTIONAL_KEYWORDS
from rlstack import models
from rlstack.config import Recipe, RecipeError, load_recipe
from rlstack.data.chat import render_prompt
from rlstack.data.dataset import FilePrompts, RowMapping, scan
from rlstack.data.sources import open_rows

MAX_VALUE_CHARS = 80


def short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= MAX_VALUE_CHARS else text[: MAX_VALUE_CHARS - 3] + "..."


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rlstack data inspect", description=__doc__.splitlines()[0])
    parser.add_argument("file", help="a .jsonl file, a .parquet file or a datasets.save_to_disk directory")
    parser.add_argument("--recipe", help="recipe whose data mapping and tokenizer to use (default: built-in defaults)")
    parser.add_argument("overrides", nargs="*", help="key.path=value overrides, e.g. data.prompt_key=question")
    args = parser.parse_intermixed_args(argv)
    try:
        if args.overrides and not args.recipe:
            raise RecipeError("overrides need --recipe")
        recipe = load_recipe(args.recipe, args.overrides) if args.recipe else Recipe()
        data = recipe.data.model_copy(update={"path": args.file})
        tokenizer = models.load_tokenizer(recipe.model.path)
        rows = open_rows(args.file, data.split, "FILE")
        mapping = RowMapping(data.prompt_key, data.prompt_template, data.answer_key)
        keys, report = scan(rows, mapping, tokenizer, data)
    except (RecipeError, ValueError) as exc:
        print(f"rlstack: error: {exc}", file=sys.stderr)
        return 2
    prompt = FilePrompts(rows, keys, mapping)[0]
    skipped = ", ".join(f"{n} {reason}" for reason, n in report.skipped.items()) or "none"
    print(f"file: {report.path}")
    print(
        f"rows: {report.num_rows} read, {report.num_kept} kept, {report.num_too_long} longer than "
        f"data.max_prompt_tokens={data.max_prompt_tokens}; malformed: {skipped}"
    )
    print("prompt tokens: " + "  ".join(f"{name} {value}" for name, value in report.prompt_tokens.items()))
    print("\nfirst prompt, rendered:")
    print(tokenizer.decode(render_prompt(tokenizer, prompt.messages, data.system_prompt)))
    print("\nreward keywords for it:")
    print(f"  prompt = {short(prompt.question)}")
    for name, value in prompt.fields.items():
        print(f"  {name} = {short(value)}")
    print(f"  (and {', '.join(OPTIONAL_KEYWORDS)} to functions that name them)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
