"""ShapesWorld's plan format: what a reasoned edit writes before its picture.

`reasoned_edit` is an edit that says in words what it sees and what it will draw before
drawing it. Its prompt is the edit's; the sampler forces the word `before` (`REASON_LEAD`)
where a plain edit forces `<boi>` (`AnyGen.edit(reason=True)`). Which object "the red circle"
is, and which of its attributes the edit keeps, gets decided in text, where they are words,
not codes (edit errors of the plain task are mostly the wrong object erased or a moved
object's size lost). The text has one of four forms (`tasks.reasoned_edit.form`, see
`reasoning`); `scene` is the default, the bundled model writes `slots` (it learned the plan
in words first, `reasoned_text`; docs/experiments.md):
- `scene`: `before <source caption> after <target caption>`;
- `object`: `before <edited object in the source> after <it in the target>` (`nothing` for
  the absent side of an add or a remove), e.g. `before a large red circle at the left after
  a large red circle at the top`;
- `caption_object`: `before <source caption> change <edited object> to <it, edited>`;
- `slots`: `before <source objects> after <the same objects, edited in place>`, each object
  a slot `size colour shape position` (`Obj.slot`, no `a`/`at the`), e.g. `before large red
  circle left, small blue square center after large red circle top, small blue square center`
  (`Edit.slots`). The scene form's target caption re-sorts a moved object and repeats `at the`
  before every position, so copying an object's position means matching three words back; the
  model often copies another object's (most `scene` errors). Here the second list is the first
  with one slot changed, and a position follows its object's shape directly.
It needs the scenes (ShapesWorld; not user pairs).

`reasoned_text` is practice for that plan without the pictures: `<bos> instruction
<before ...> <after ...> <eos>` with the loss on the plan only (`reasoning_parts` splits a
reasoned edit's text into what the source shows and what the edit makes of it). It is
about 37 tokens where a reasoned edit is about 170 (`anygen pretokenize` prints both).
"""

from __future__ import annotations

from dataclasses import dataclass

from anygen.worlds.shapes.world import Scene, apply_instruction, edit_refusal, parse_caption, parse_slots

REASON_LEAD = "before"  # every reasoned edit's text starts with it (the sampler forces it)
PLAN_TURN = " after "  # between what the source shows and the plan (scene, object and slots forms)
REASON_FORMS = ("scene", "object", "caption_object", "slots")  # what the text says (`reasoning`)
REASONING_BUDGET = 96  # text tokens before the picture: the longest slots text of 3 objects is about 40


def reasoning_parts(form: str, edit) -> tuple[str, str]:
    """A reasoned edit's text in `form` (REASON_FORMS) of a ShapesWorld `Edit`, in two parts: what
    the source shows (`before ...`) and what the edit makes of it (` after ...`, ` change ...`)."""
    if form == "scene":
        return f"{REASON_LEAD} {edit.source.caption()}", f" after {edit.target.caption()}"
    if form == "object":
        before, after = edit.change()
        return f"{REASON_LEAD} {before}", f" after {after}"
    if form == "caption_object":
        return f"{REASON_LEAD} {edit.source.caption()}", " change {} to {}".format(*edit.change())
    if form == "slots":
        before, after = edit.slots()
        return f"{REASON_LEAD} {before}", f" after {after}"
    raise ValueError(f"reasoning form must be one of {', '.join(REASON_FORMS)}, got {form!r}")


def reasoning(form: str, edit) -> str:
    """The text of a reasoned edit in `form` (REASON_FORMS) of a ShapesWorld `Edit`."""
    return "".join(reasoning_parts(form, edit))


def parse_reasoning(text: str) -> tuple[str, str] | None:
    """(what was before, what comes after) of a `scene`, `object` or `slots` reasoning, else None."""
    lead, turn = f"{REASON_LEAD} ", PLAN_TURN
    if not text.startswith(lead) or turn not in text:
        return None
    before, after = text[len(lead):].split(turn, 1)
    return before.strip(), after.strip()


def planned_scene(text: str) -> Scene | None:
    """The ShapesWorld `Scene` a `scene` or `slots` reasoning says the edit will draw (its ``after``
    part), else None (another form, or text that does not parse): what a reasoned edit's picture
    is checked against (`AnyGen.edit(reason=True, best_of=N)`)."""
    parts = parse_reasoning(text)
    if parts is None:
        return None
    return parse_caption(parts[1]) or parse_slots(parts[1])


def _scene_of(text: str) -> Scene | None:
    return parse_caption(text) or parse_slots(text)


def refusal(instruction: str, seen: str, plan: str | None = None) -> str | None:
    """Why an edit should be refused, given what the source shows (`seen`: a caption, or the
    `before` part of a `scene` or `slots` reasoning) and optionally the edit's plan (the `after`
    part of one): the instruction names an object `seen` does not hold, or would change nothing
    (`edit_refusal`); or, for an instruction that is no valid change of `seen` in the world's
    grammar, a plan that draws `seen` unchanged. None when `seen` does not parse (nothing is known)."""
    scene = _scene_of(seen)
    if scene is None:
        return None
    if (why := edit_refusal(scene, instruction)) is not None:
        return why
    if plan is not None and apply_instruction(scene, instruction) is None and _scene_of(plan) == scene:
        return "nothing would change: the plan draws the image as it is"
    return None


def follows_plan(reasoning: str, caption: str) -> bool:
    """Whether a caption of a reasoned edit's picture names the scene its reasoning planned
    (`planned_scene`); False where either does not parse."""
    plan = planned_scene(reasoning)
    return plan is not None and parse_caption(caption) == plan


@dataclass(frozen=True)
class ShapesPlanFormat:
    """`anygen.tasks.world.PlanFormat` of ShapesWorld's `scene`, `object` and `slots` forms:
    `before <seen> after <plan>`; a picture follows its plan when its caption parses to the
    scene the plan names (`scene` and `slots` forms); an edit is refused (`refusal`) by what
    `seen` (a caption) says the source holds and the plan of a `scene` or `slots` text."""

    lead: str = REASON_LEAD
    budget: int = REASONING_BUDGET

    def split(self, text: str) -> tuple[str, str] | None:
        return parse_reasoning(text)

    def seen_prompt(self, seen: str) -> str:
        return f"{REASON_LEAD} {seen}"

    def join(self, seen: str, plan: str) -> str:
        return f"{REASON_LEAD} {seen} {plan}"

    def follows(self, text: str, caption: str) -> bool:
        return follows_plan(text, caption)

    def refusal(self, instruction: str, seen: str, plan: str | None = None) -> str | None:
        return refusal(instruction, seen, plan)
