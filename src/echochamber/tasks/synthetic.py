"""Synthetic GSM-style word problems with exact integer answers, renderable in all three solution formats.

The laptop study needs a stand-in for the paper's instruction datasets (TinyGSM, OpenMathInstruct-1/2) that a
~1M-parameter model can learn in minutes. Each problem is a small computation graph told as a story:

    question   Mia buys 4 packs of pencils. Each pack has 6 pencils. She gives 5 of them to Liam.
               How many pencils does Mia have left?
    givens     packs = 4, pencils_per_pack = 6, pencils_for_liam = 5       (numbers copied from the question)
    steps      pencils = packs * pencils_per_pack                           "Mia buys 4 * 6 = 24 pencils."
               pencils_left = pencils - pencils_for_liam                    "After that she has 24 - 5 = 19 pencils left."

and renders as a TinyGSM function, an OpenMathInstruct-1 code block, or text with the arithmetic written out.
That difference is the mechanism the study must be able to show: in the code formats the interpreter does the
arithmetic and the model only writes expressions over numbers it copies from the question; in text the model
must itself get `24 - 5 = 19` right, which is harder for a tiny model.

Splits. `train` and `test` share the step/number settings; `hard` has more steps and larger numbers (transfer);
`longer` has the train/test numbers with exactly max_steps + 1 steps, one more than train ever has (transfer in
length alone); `larger` has the train/test steps and multipliers with every stated amount in (max_number,
2 max_number], above anything a train question states (transfer in magnitude alone; results up to 2 max_value);
`renamed` has the train/test steps and numbers told with people and objects that no other split ever names
(unseen wording alone: the code formats' variable names change with the objects).
A problem's split is decided by a hash of its computation (the given numbers, in order, and the operations
between them; not the names, objects or story): every split but train is drawn from the held-out side, train
from the rest, so no held-out question ever occurs in train, not even with the names changed, for ANY seed:
data.py draws each pretraining source from the train split with its own seed, and all of them stay disjoint from
the held-out splits of every seed.

Errors. `render_solution(..., error_rate=p)` makes a solution wrong with probability p the way a weaker
dataset is wrong: one step uses the wrong operation, and everything after it (later steps, the printed output,
the boxed answer) follows the wrong value consistently. Greedy decoding averages such noise away, so it cannot
make a format lose; a SYSTEMATIC error can: `render_solution(..., systematic="*->+")` (SyntheticConfig.
systematic_error per format) does every multiplication of the solution as an addition, with the same
consistency. Values stay exact and positive: a step whose rewrite would make the computation inexact or
non-positive (e.g. *->+ shrinks 4 * 6 = 24 to 10, and a later "gives 15 away" would go below zero) keeps its
true operation (`systematic_ops`). Measured on 3000 train problems (`systematic_share`), the share of the
operation's steps rewritten: *->+ 69% (small_numbers world: 74%), -->+ 93%, +->* 83%, /->(+-*) 100%;
rewrites to - or / fail more often (+->- 54%, *->/ 12%).

Knobs of the synthetic world (SyntheticConfig): the number ranges (min/max_number, max_factor, max_value; the
`small_numbers` config is a world where text arithmetic is learnable), the steps (min/max_steps, hard_*),
per-format random and systematic errors (error_rate, systematic_error; a pretraining source can override both),
and, in data.py, per-format document counts (SourceConfig.n).
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass, field
from typing import Literal

from .problem import Problem

Split = Literal["train", "test", "hard", "longer", "larger", "renamed"]
SPLITS = ("train", "test", "hard", "longer", "larger", "renamed")
SPLIT_SALT = "echochamber-synthetic-split-v1"  # changing it reshuffles which problems are test: never do so silently


@dataclass
class SyntheticConfig:
    """Knobs of the synthetic problem generator (the laptop stand-in for the paper's GSM8K-like datasets)."""
    seed: int = 0  # same seed -> same problems; each split draws from its own stream of this seed
    min_steps: int = 2  # fewest arithmetic steps in a train/test problem (GSM8K: 2-8, mostly 2-4)
    max_steps: int = 3  # most arithmetic steps in a train/test problem
    min_number: int = 2  # smallest number a question states (amounts, counts, prices)
    max_number: int = 50  # largest amount/count a question states (the second operand of + and -)
    max_factor: int = 12  # largest multiplier or divisor a question states (the second operand of * and /)
    max_value: int = 1000  # bound on every intermediate result and the answer
    hard_min_steps: int = 4  # `hard` split: fewest steps (transfer to longer problems)
    hard_max_steps: int = 5  # `hard` split: most steps
    hard_max_number: int = 300  # `hard` split: largest amount/count
    hard_max_factor: int = 25  # `hard` split: largest multiplier/divisor
    hard_max_value: int = 50000  # `hard` split: bound on intermediate results
    test_fraction: float = 0.1  # share of the problem space (by hash of the computation) held out for test/hard
    train_size: int = 7473  # problems `load_problems("synthetic", "train")` returns when n is not given (GSM8K train)
    test_size: int = 1319  # problems of test/hard when n is not given (GSM8K test)
    # chance that a rendered solution of each format has one wrong step (models datasets of different quality;
    # a pretraining source's own `error_rate` is what data.py passes to render_solution)
    error_rate: dict[str, float] = field(default_factory=lambda: {"tinygsm": 0.0, "omi1": 0.0, "text": 0.0})
    # format -> "A->B": that format's solutions always do operation A as B (e.g. {"tinygsm": "*->+"}: every
    # multiplication is written as an addition), a systematic error that greedy decoding cannot average away
    # (see "Errors" above; a pretraining source's own `systematic_error` overrides its format's entry). Off: {}
    systematic_error: dict[str, str] = field(default_factory=dict)

    def check(self) -> None:
        """Raise ValueError naming the field when the settings cannot produce problems."""
        for lo, hi in (("min_steps", "max_steps"), ("hard_min_steps", "hard_max_steps")):
            if not 1 <= getattr(self, lo) <= getattr(self, hi):
                raise ValueError(f"synthetic: need 1 <= {lo} <= {hi}, got {getattr(self, lo)} and {getattr(self, hi)}")
        if not 1 <= self.min_number <= min(self.max_number, self.hard_max_number):
            raise ValueError(f"synthetic: need 1 <= min_number <= max_number, hard_max_number; got {self.min_number}")
        if min(self.max_factor, self.hard_max_factor) < 2:
            raise ValueError("synthetic: max_factor and hard_max_factor must be >= 2")
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"synthetic: test_fraction must be in (0, 1), got {self.test_fraction}")
        for fmt, p in self.error_rate.items():
            if fmt not in FORMAT_NAMES or not 0.0 <= p <= 1.0:
                raise ValueError(f"synthetic.error_rate: {fmt!r}: {p} (formats {FORMAT_NAMES}, rates in [0, 1])")
        for fmt, rewrite in self.systematic_error.items():
            if fmt not in FORMAT_NAMES:
                raise ValueError(f"synthetic.systematic_error: unknown format {fmt!r} (formats {FORMAT_NAMES})")
            parse_rewrite(rewrite, f"synthetic.systematic_error.{fmt}")


FORMAT_NAMES = ("tinygsm", "omi1", "text")


@dataclass(frozen=True)
class _Params:
    """The settings one split draws with."""
    min_steps: int
    max_steps: int
    min_number: int
    max_number: int
    max_factor: int
    max_value: int
    unseen_names: bool = False  # people and objects from the held-out pools (`renamed`)


def _params(split: str, cfg: SyntheticConfig) -> _Params:
    if split == "hard":
        return _Params(cfg.hard_min_steps, cfg.hard_max_steps, cfg.min_number, cfg.hard_max_number,
                       cfg.hard_max_factor, cfg.hard_max_value)
    if split == "larger":  # every stated amount above any train states; the steps and multipliers of train
        return _Params(cfg.min_steps, cfg.max_steps, cfg.max_number + 1, 2 * cfg.max_number, cfg.max_factor,
                       2 * cfg.max_value)
    steps = (cfg.max_steps + 1,) * 2 if split == "longer" else (cfg.min_steps, cfg.max_steps)
    return _Params(*steps, cfg.min_number, cfg.max_number, cfg.max_factor, cfg.max_value, split == "renamed")


# ----------------------------------------------------------------------------- problems

@dataclass(frozen=True)
class Step:
    """One arithmetic step: `var = left op right`; left/right name givens or earlier steps."""
    var: str
    left: str
    op: str  # "+", "-", "*", "/" (divisions are exact)
    right: str
    text: str  # the text-format sentence, with a {calc} slot for "24 - 5 = 19"


@dataclass(frozen=True)
class SyntheticProblem:
    """A generated problem; `to_problem()` gives the `Problem` every other module takes."""
    id: str  # "syn-train-000123"
    split: str
    kind: str  # story kind: shopping, baking, collecting, travel, saving, sharing
    question: str
    answer: int  # exact, positive
    givens: tuple[tuple[str, int], ...]  # (python name, value) of each number the question states, in order
    steps: tuple[Step, ...]  # in order; the last one's value is the answer
    conclusion: str  # closing sentence with an {answer} slot: "Thus Mia has {answer} pencils left."

    @property
    def gold(self) -> str:
        return str(self.answer)

    def to_problem(self) -> Problem:
        # givens/computation: the computation itself, as JSON-ready lists, for error_categories.categorise
        return Problem(id=self.id, question=self.question, answer=self.gold,
                       meta={"source": "synthetic", "split": self.split, "kind": self.kind, "steps": len(self.steps),
                             "givens": [[name, value] for name, value in self.givens],
                             "computation": [[s.var, s.left, s.op, s.right] for s in self.steps]})


# ----------------------------------------------------------------------------- story templates
#
# A story kind is a small grammar of moves. Each move acts on the running quantity ("cur"), which has a role
# (bought items, money, a per-friend share, ...) that decides which moves may follow, so every story stays
# sensible: prices apply to items bought, change is given for a cost, shares split a pile. A move states new
# numbers in one question sentence, adds one or two steps, and knows how to ask for and state its result.
#
# Mini-language of a move:
#   slots  "a n packs"       slot a: a number in [min_number, max_number], python name `packs`
#          "b f per_pack"    a factor in [2, max_factor]
#          "a part coupon"   fewer than the running value (so subtraction stays positive)
#          "a above paid"    more than the running value (paid - cost)
#          "b div@0 friends" a divisor of op 0's result (div: of the running value) in [2, max_factor]
#   ops    "pencils_left = cur - a | After that {he} has {calc} pencils left."
#          operands: cur (running value), prev (the running value before this move), a slot, @k (op k's result)
# Templates use {name} {friend} {he} {He} {him} {his} {His} {himself} {obj} {objs} {obj2} {objs2} and slots.


@dataclass(frozen=True)
class _Slot:
    name: str  # "a", "b"
    kind: str  # n | f | part | above | div
    ref: str  # what part/above/div are relative to: "cur" or "@k"
    var: str  # python-name template


@dataclass(frozen=True)
class _Op:
    var: str
    left: str
    op: str
    right: str
    sentence: str


@dataclass(frozen=True)
class _Move:
    needs: tuple[str, ...]  # roles of the running quantity it can act on ("start": opens the story)
    gives: str  # role of its result; "end": nothing may follow
    clause: str  # question sentence(s) stating its numbers ("" for a pure question, e.g. "together")
    slots: tuple[_Slot, ...]
    ops: tuple[_Op, ...]
    ask: str  # the question's last sentence when this move comes last
    tell: str  # the solution's conclusion when this move comes last, with an {ans} slot


_OP_RE = re.compile(r"^\s*(\S+)\s*=\s*(\S+)\s*([-+*/])\s*(\S+)\s*\|\s*(.+)$")


def _mv(needs: str, gives: str, clause: str, slots: list[str], ops: list[str], ask: str, tell: str) -> _Move:
    parsed_slots = []
    for s in slots:
        name, kind, var = s.split()
        kind, _, ref = kind.partition("@")
        parsed_slots.append(_Slot(name, kind, "@" + ref if ref else "cur", var))
    parsed_ops = []
    for o in ops:
        m = _OP_RE.match(o)
        assert m, f"bad op template {o!r}"
        parsed_ops.append(_Op(*m.groups()))
    return _Move(tuple(needs.split("|")), gives, clause, tuple(parsed_slots), tuple(parsed_ops), ask, tell)


@dataclass(frozen=True)
class _Kind:
    objects: tuple[tuple[str, str], ...]  # (singular, plural)
    moves: tuple[_Move, ...]
    unseen_objects: tuple[tuple[str, str], ...]  # only the `renamed` split tells of these


_KINDS: dict[str, _Kind] = {
    "shopping": _Kind(
        unseen_objects=(("ruler", "rulers"), ("bowl", "bowls"), ("lemon", "lemons"), ("towel", "towels")),
        objects=(("apple", "apples"), ("pear", "pears"), ("orange", "oranges"), ("pencil", "pencils"),
                 ("notebook", "notebooks"), ("eraser", "erasers"), ("candle", "candles"), ("marker", "markers"),
                 ("cup", "cups"), ("plate", "plates")),
        moves=(
            _mv("start", "bought", "{name} buys {a} {objs}.", ["a n {objs}"], [],
                "How many {objs} does {name} buy?", "{name} buys {ans} {objs}."),
            _mv("start", "bought", "{name} buys {a} packs of {objs}. Each pack has {b} {objs}.",
                ["a n packs", "b f {objs}_per_pack"], ["{objs} = a * b | {name} buys {calc} {objs}."],
                "How many {objs} does {name} buy?", "{name} buys {ans} {objs}."),
            _mv("start", "cost", "{name} buys {a} {objs} for {b} dollars each.",
                ["a n {objs}", "b f price_per_{obj}"], ["cost = a * b | The {objs} cost {calc} dollars."],
                "How much does {name} spend, in dollars?", "{name} spends {ans} dollars."),
            _mv("bought", "bought", "Later {he} buys {a} more.", ["a n more_{objs}"],
                ["total_{objs} = cur + a | Now {he} has {calc} {objs}."],
                "How many {objs} does {name} have now?", "{name} has {ans} {objs} now."),
            _mv("bought", "cost", "Each {obj} costs {a} dollars.", ["a f price_per_{obj}"],
                ["cost = cur * a | The {objs} cost {calc} dollars."],
                "How much does {name} spend, in dollars?", "{name} spends {ans} dollars."),
            _mv("bought|owned", "owned", "{He} gives {a} of them to {friend}.", ["a part {objs}_for_{friend}"],
                ["{objs}_left = cur - a | After that {he} has {calc} {objs} left."],
                "How many {objs} does {name} have left?", "{name} has {ans} {objs} left."),
            _mv("bought|owned", "owned", "{He} drops {a} of them on the way home.", ["a part dropped_{objs}"],
                ["{objs}_left = cur - a | {He} has {calc} {objs} left."],
                "How many {objs} does {name} have left?", "{name} has {ans} {objs} left."),
            _mv("bought|owned", "end", "{He} puts them equally into {a} bags.", ["a div bags"],
                ["{objs}_per_bag = cur / a | Each bag gets {calc} {objs}."],
                "How many {objs} go into each bag?", "each bag gets {ans} {objs}."),
            _mv("cost", "cost", "{He} also pays {a} dollars for delivery.", ["a n delivery_fee"],
                ["total_cost = cur + a | With delivery {he} pays {calc} dollars."],
                "How much does {name} pay in total, in dollars?", "{name} pays {ans} dollars in total."),
            _mv("cost", "cost", "{He} also buys {a} {objs2} for {b} dollars each.",
                ["a n {objs2}", "b f price_per_{obj2}"],
                ["{obj2}_cost = a * b | The {objs2} cost {calc} dollars.",
                 "total_cost = cur + @0 | So {he} spends {calc} dollars in total."],
                "How much does {name} spend in total, in dollars?", "{name} spends {ans} dollars in total."),
            _mv("cost", "cost", "{He} has a coupon for {a} dollars off.", ["a part coupon"],
                ["final_cost = cur - a | With the coupon {he} pays {calc} dollars."],
                "How much does {name} pay with the coupon, in dollars?", "{name} pays {ans} dollars."),
            _mv("cost", "cost", "{He} shops like this every week for {a} weeks.", ["a f weeks"],
                ["cost_all_weeks = cur * a | In {a} weeks {he} spends {calc} dollars."],
                "How much does {name} spend in {a} weeks, in dollars?", "{name} spends {ans} dollars in {a} weeks."),
            _mv("cost", "end", "{He} pays with {a} dollars.", ["a above paid"],
                ["change = a - cur | {His} change is {calc} dollars."],
                "How much change does {name} get, in dollars?", "{name} gets {ans} dollars in change."),
            _mv("cost", "end", "The cost is shared equally by {a} friends.", ["a div friends"],
                ["cost_per_friend = cur / a | Each friend pays {calc} dollars."],
                "How much does each friend pay, in dollars?", "each friend pays {ans} dollars."),
        )),
    "baking": _Kind(
        unseen_objects=(("pie", "pies"), ("scone", "scones"), ("waffle", "waffles"), ("donut", "donuts")),
        objects=(("cookie", "cookies"), ("muffin", "muffins"), ("cupcake", "cupcakes"), ("brownie", "brownies"),
                 ("roll", "rolls"), ("pancake", "pancakes"), ("bagel", "bagels"), ("tart", "tarts")),
        moves=(
            _mv("start", "baked", "{name} bakes {a} {objs}.", ["a n {objs}"], [],
                "How many {objs} does {name} bake?", "{name} bakes {ans} {objs}."),
            _mv("start", "baked", "{name} bakes {a} trays of {objs}. Each tray holds {b} {objs}.",
                ["a n trays", "b f {objs}_per_tray"], ["{objs} = a * b | {name} bakes {calc} {objs}."],
                "How many {objs} does {name} bake?", "{name} bakes {ans} {objs}."),
            _mv("baked", "baked", "The next day {he} bakes {a} more.", ["a n more_{objs}"],
                ["total_{objs} = cur + a | Altogether {he} bakes {calc} {objs}."],
                "How many {objs} does {name} bake in all?", "{name} bakes {ans} {objs} in all."),
            _mv("baked|left", "left", "{His} family eats {a} of them.", ["a part eaten_{objs}"],
                ["{objs}_left = cur - a | That leaves {calc} {objs}."],
                "How many {objs} are left?", "{ans} {objs} are left."),
            _mv("baked|left", "left", "{He} gives {a} of them to {friend}.", ["a part {objs}_for_{friend}"],
                ["{objs}_left = cur - a | {He} has {calc} {objs} left."],
                "How many {objs} does {name} have left?", "{name} has {ans} {objs} left."),
            _mv("baked|left", "money", "{He} sells each {obj} for {a} dollars.", ["a f price_per_{obj}"],
                ["earnings = cur * a | {He} earns {calc} dollars."],
                "How much money does {name} make, in dollars?", "{name} makes {ans} dollars."),
            _mv("baked|left", "end", "{He} packs them equally into {a} boxes.", ["a div boxes"],
                ["{objs}_per_box = cur / a | Each box gets {calc} {objs}."],
                "How many {objs} go into each box?", "each box gets {ans} {objs}."),
            _mv("money", "money", "{He} spent {a} dollars on ingredients.", ["a part ingredient_cost"],
                ["profit = cur - a | {His} profit is {calc} dollars."],
                "How much profit does {name} make, in dollars?", "{name} makes a profit of {ans} dollars."),
            _mv("money", "money", "{He} also gets {a} dollars in tips.", ["a n tips"],
                ["total_money = cur + a | With tips {he} has {calc} dollars."],
                "How much money does {name} have in total, in dollars?", "{name} has {ans} dollars in total."),
            _mv("money", "end", "{He} gives the money equally to {a} charities.", ["a div charities"],
                ["money_per_charity = cur / a | Each charity gets {calc} dollars."],
                "How much money does each charity get, in dollars?", "each charity gets {ans} dollars."),
        )),
    "collecting": _Kind(
        unseen_objects=(("coin", "coins"), ("feather", "feathers"), ("badge", "badges"), ("leaf", "leaves")),
        objects=(("sticker", "stickers"), ("marble", "marbles"), ("shell", "shells"), ("stamp", "stamps"),
                 ("card", "cards"), ("rock", "rocks"), ("button", "buttons"), ("bead", "beads")),
        moves=(
            _mv("start", "have", "{name} has {a} {objs}.", ["a n {objs}"], [],
                "How many {objs} does {name} have?", "{name} has {ans} {objs}."),
            _mv("start", "have", "{name} has {a} boxes of {objs}. Each box holds {b} {objs}.",
                ["a n boxes", "b f {objs}_per_box"], ["{objs} = a * b | {name} has {calc} {objs}."],
                "How many {objs} does {name} have?", "{name} has {ans} {objs}."),
            _mv("have", "have", "{friend} gives {him} {a} more {objs}.", ["a n {objs}_from_{friend}"],
                ["total_{objs} = cur + a | Now {he} has {calc} {objs}."],
                "How many {objs} does {name} have now?", "{name} has {ans} {objs} now."),
            _mv("have", "have", "{He} collects {a} more {objs} on Saturday.", ["a n saturday_{objs}"],
                ["{objs}_after_saturday = cur + a | After Saturday {he} has {calc} {objs}."],
                "How many {objs} does {name} have now?", "{name} has {ans} {objs} now."),
            _mv("have", "have", "{He} gives {a} {objs} to {friend}.", ["a part {objs}_for_{friend}"],
                ["{objs}_left = cur - a | {He} has {calc} {objs} left."],
                "How many {objs} does {name} have left?", "{name} has {ans} {objs} left."),
            _mv("have", "have", "{He} loses {a} of them.", ["a part lost_{objs}"],
                ["{objs}_left = cur - a | {He} has {calc} {objs} left."],
                "How many {objs} does {name} have left?", "{name} has {ans} {objs} left."),
            _mv("have", "end", "{He} puts them equally into {a} jars.", ["a div jars"],
                ["{objs}_per_jar = cur / a | Each jar holds {calc} {objs}."],
                "How many {objs} are in each jar?", "each jar holds {ans} {objs}."),
            _mv("have", "friend", "{friend} has {a} times as many {objs} as {name}.", ["a f times"],
                ["{friend}_{objs} = cur * a | {friend} has {calc} {objs}."],
                "How many {objs} does {friend} have?", "{friend} has {ans} {objs}."),
            _mv("have", "friend", "{friend} has {a} more {objs} than {name}.", ["a n extra_{objs}"],
                ["{friend}_{objs} = cur + a | {friend} has {calc} {objs}."],
                "How many {objs} does {friend} have?", "{friend} has {ans} {objs}."),
            _mv("friend", "end", "", [], ["together = prev + cur | Together they have {calc} {objs}."],
                "How many {objs} do they have together?", "they have {ans} {objs} together."),
        )),
    "travel": _Kind(
        unseen_objects=(("bus", "buses"), ("jeep", "jeeps"), ("taxi", "taxis")),
        objects=(("car", "cars"), ("van", "vans"), ("truck", "trucks")),
        moves=(
            _mv("start", "dist", "{name} drives {a} miles on Monday.", ["a n miles_monday"], [],
                "How many miles does {name} drive?", "{name} drives {ans} miles."),
            _mv("start", "dist", "{name} drives {a} miles a day for {b} days.", ["a n miles_per_day", "b f days"],
                ["total_miles = a * b | {He} drives {calc} miles."],
                "How many miles does {name} drive?", "{name} drives {ans} miles."),
            _mv("dist", "dist", "The next day {he} drives {a} more miles.", ["a n more_miles"],
                ["total_miles = cur + a | In total {he} drives {calc} miles."],
                "How many miles does {name} drive in total?", "{name} drives {ans} miles in total."),
            _mv("dist", "dist", "{He} repeats this {a} times.", ["a f repeats"],
                ["miles_all_trips = cur * a | Repeating it {a} times, {he} drives {calc} miles."],
                "How many miles does {name} drive in all?", "{name} drives {ans} miles in all."),
            _mv("dist", "end", "{His} whole trip is {a} miles long.", ["a above trip_miles"],
                ["miles_left = a - cur | {He} still has {calc} miles to go."],
                "How many more miles does {name} have to drive?", "{name} has {ans} more miles to drive."),
            _mv("dist", "gallons", "{His} {obj} goes {a} miles on one gallon of gas.", ["a div miles_per_gallon"],
                ["gallons = cur / a | {He} uses {calc} gallons of gas."],
                "How many gallons of gas does {name} use?", "{name} uses {ans} gallons of gas."),
            _mv("gallons", "money", "Gas costs {a} dollars per gallon.", ["a f price_per_gallon"],
                ["gas_cost = cur * a | The gas costs {calc} dollars."],
                "How much does {name} spend on gas, in dollars?", "{name} spends {ans} dollars on gas."),
            _mv("money", "money", "{He} also pays {a} dollars for parking.", ["a n parking_fee"],
                ["total_cost = cur + a | In total {he} pays {calc} dollars."],
                "How much does {name} pay in total, in dollars?", "{name} pays {ans} dollars in total."),
            _mv("money", "end", "{He} splits the cost equally among {a} friends.", ["a div friends"],
                ["cost_per_friend = cur / a | Each friend pays {calc} dollars."],
                "How much does each friend pay, in dollars?", "each friend pays {ans} dollars."),
        )),
    "saving": _Kind(
        unseen_objects=(("robot", "robots"), ("ball", "balls"), ("doll", "dolls"), ("drum", "drums")),
        objects=(("book", "books"), ("comic", "comics"), ("puzzle", "puzzles"), ("kite", "kites"),
                 ("toy car", "toy cars"), ("board game", "board games")),
        moves=(
            _mv("start", "money", "{name} has {a} dollars in {his} piggy bank.", ["a n savings"], [],
                "How many dollars does {name} have?", "{name} has {ans} dollars."),
            _mv("start", "money", "{name} saves {a} dollars a week for {b} weeks.",
                ["a n dollars_per_week", "b f weeks"], ["savings = a * b | {He} saves {calc} dollars."],
                "How many dollars does {name} save?", "{name} saves {ans} dollars."),
            _mv("money", "money", "{His} grandmother gives {him} {a} dollars.", ["a n gift"],
                ["total_money = cur + a | Then {he} has {calc} dollars."],
                "How many dollars does {name} have now?", "{name} has {ans} dollars now."),
            _mv("money", "money", "{He} earns {a} dollars washing cars.", ["a n car_wash_money"],
                ["money_after_car_wash = cur + a | Now {he} has {calc} dollars."],
                "How many dollars does {name} have now?", "{name} has {ans} dollars now."),
            _mv("money", "money", "{He} spends {a} dollars on a {obj}.", ["a part {obj}_price"],
                ["money_left = cur - a | {He} has {calc} dollars left."],
                "How many dollars does {name} have left?", "{name} has {ans} dollars left."),
            _mv("money", "money", "{He} spends {a} dollars on lunch.", ["a part lunch_cost"],
                ["money_after_lunch = cur - a | After lunch {he} has {calc} dollars."],
                "How many dollars does {name} have left?", "{name} has {ans} dollars left."),
            _mv("money", "end", "{He} wants a bike that costs {a} dollars.", ["a above bike_price"],
                ["money_needed = a - cur | {He} needs {calc} more dollars."],
                "How many more dollars does {name} need?", "{name} needs {ans} more dollars."),
            _mv("money", "end", "{He} spends all of it on {objs} that cost {a} dollars each.",
                ["a div price_per_{obj}"], ["{objs} = cur / a | {He} buys {calc} {objs}."],
                "How many {objs} does {name} buy?", "{name} buys {ans} {objs}."),
        )),
    "sharing": _Kind(
        unseen_objects=(("plum", "plums"), ("cracker", "crackers"), ("pretzel", "pretzels"), ("walnut", "walnuts")),
        objects=(("candy", "candies"), ("grape", "grapes"), ("almond", "almonds"), ("strawberry", "strawberries"),
                 ("cherry", "cherries"), ("peanut", "peanuts"), ("raisin", "raisins")),
        moves=(
            _mv("start", "have", "{name} has {a} {objs}.", ["a n {objs}"], [],
                "How many {objs} does {name} have?", "{name} has {ans} {objs}."),
            _mv("start", "have", "{name} has {a} bags of {objs} with {b} {objs} in each bag.",
                ["a n bags", "b f {objs}_per_bag"], ["{objs} = a * b | {name} has {calc} {objs}."],
                "How many {objs} does {name} have?", "{name} has {ans} {objs}."),
            _mv("have", "have", "{friend} gives {him} {a} more.", ["a n {objs}_from_{friend}"],
                ["total_{objs} = cur + a | Now {he} has {calc} {objs}."],
                "How many {objs} does {name} have now?", "{name} has {ans} {objs} now."),
            _mv("have", "have", "{He} eats {a} of them.", ["a part eaten_{objs}"],
                ["{objs}_left = cur - a | {He} has {calc} {objs} left."],
                "How many {objs} does {name} have left?", "{name} has {ans} {objs} left."),
            _mv("have", "each", "{He} shares them equally among {a} friends.", ["a div friends"],
                ["{objs}_per_friend = cur / a | Each friend gets {calc} {objs}."],
                "How many {objs} does each friend get?", "each friend gets {ans} {objs}."),
            _mv("have", "each", "{He} keeps {a} for {himself} and shares the rest equally among {b} friends.",
                ["a part kept_{objs}", "b div@0 friends"],
                ["{objs}_to_share = cur - a | {He} shares {calc} {objs}.",
                 "{objs}_per_friend = @0 / b | Each friend gets {calc} {objs}."],
                "How many {objs} does each friend get?", "each friend gets {ans} {objs}."),
            _mv("each", "each", "Each friend eats {a} of them.", ["a part eaten_each"],
                ["{objs}_left_each = cur - a | Each friend has {calc} {objs} left."],
                "How many {objs} does each friend have left?", "each friend has {ans} {objs} left."),
            _mv("each", "each", "Then {friend} gives each friend {a} more.", ["a n more_each"],
                ["{objs}_each_now = cur + a | Each friend now has {calc} {objs}."],
                "How many {objs} does each friend have now?", "each friend has {ans} {objs} now."),
        )),
}
KINDS = tuple(_KINDS)

_NAMES = (("Mia", "she"), ("Emma", "she"), ("Ava", "she"), ("Lily", "she"), ("Zoe", "she"), ("Nora", "she"),
          ("Ruby", "she"), ("Maya", "she"), ("Sara", "she"), ("Anna", "she"), ("Ella", "she"), ("Grace", "she"),
          ("Liam", "he"), ("Noah", "he"), ("Leo", "he"), ("Omar", "he"), ("Jack", "he"), ("Ben", "he"),
          ("Sam", "he"), ("Max", "he"), ("Tom", "he"), ("Luca", "he"), ("Ravi", "he"), ("Eli", "he"))
_UNSEEN_NAMES = (("Iris", "she"), ("Hana", "she"), ("Olga", "she"), ("Tara", "she"), ("Vera", "she"),
                 ("Jonas", "he"), ("Ivan", "he"), ("Kofi", "he"), ("Hugo", "he"), ("Felix", "he"))  # `renamed` only
_PRONOUNS = {
    "she": {"he": "she", "He": "She", "him": "her", "his": "her", "His": "Her", "himself": "herself"},
    "he": {"he": "he", "He": "He", "him": "him", "his": "his", "His": "His", "himself": "himself"},
}


# ----------------------------------------------------------------------------- drawing one problem

def _apply(op: str, x: int, y: int) -> int | None:
    """x op y when it is an exact positive integer, else None."""
    if op == "+":
        return x + y
    if op == "-":
        return x - y if x > y else None
    if op == "*":
        return x * y
    if op == "/":
        return x // y if y > 1 and x % y == 0 else None
    raise ValueError(f"unknown op {op!r}")


def _sample(slot: _Slot, ref: int, rng: random.Random, p: _Params) -> int | None:
    """A value for `slot` that keeps its step exact and positive (ref: the value it subtracts from/divides)."""
    if slot.kind == "n":
        return rng.randint(p.min_number, p.max_number)
    if slot.kind == "f":
        return rng.randint(2, p.max_factor)
    if slot.kind == "part":  # x - a > 0
        hi = min(p.max_number, ref - 1)
        return rng.randint(p.min_number, hi) if hi >= p.min_number else None
    if slot.kind == "above":  # a - x > 0
        return ref + rng.randint(p.min_number, p.max_number)
    if slot.kind == "div":  # x / a exact, quotient >= 2
        divisors = [d for d in range(2, min(p.max_factor, ref // 2) + 1) if ref % d == 0]
        return rng.choice(divisors) if divisors else None
    raise ValueError(f"unknown slot kind {slot.kind!r}")


def _py_name(template: str, ctx: dict[str, str], used: set[str]) -> str:
    """Fill a python-name template ('{objs}_for_{friend}' -> 'pencils_for_liam'), unique within the problem."""
    base = re.sub(r"\W+", "_", template.format_map(ctx).lower()).strip("_")
    name, k = base, 2
    while name in used or name in ("result",):
        name, k = f"{base}_{k}", k + 1
    used.add(name)
    return name


class _Draft:
    """A problem being built move by move."""

    def __init__(self, kind: str, ctx: dict[str, str]):
        self.kind, self.ctx = kind, ctx
        self.last: _Move | None = None  # the last move committed: its ask/tell end the question/solution
        self.fill: dict[str, str] = {}  # ... and its template values
        self.values: dict[str, int] = {}
        self.givens: list[tuple[str, int]] = []
        self.steps: list[Step] = []
        self.clauses: list[str] = []
        self.cur: str | None = None  # python name of the running quantity
        self.prev: str | None = None  # ... and of the one before the last move
        self.used: set[str] = set()

    def try_move(self, move: _Move, rng: random.Random, p: _Params) -> bool:
        """Draw the move's numbers; commit it if every step stays exact, positive and within max_value."""
        nums: dict[str, int] = {}  # slot -> value
        results: list[int] = []  # op results so far

        def value(ref: str) -> int:
            if ref == "cur":
                return self.values[self.cur]
            if ref == "prev":
                return self.values[self.prev]
            if ref.startswith("@"):
                return results[int(ref[1:])]
            return nums[ref]

        def compute_until(k: int) -> bool:
            while len(results) <= k:
                o = move.ops[len(results)]
                r = _apply(o.op, value(o.left), value(o.right))
                if r is None or r > p.max_value:
                    return False
                results.append(r)
            return True

        for s in move.slots:
            if s.ref.startswith("@") and not compute_until(int(s.ref[1:])):
                return False
            v = _sample(s, value(s.ref) if s.kind in ("part", "above", "div") else 0, rng, p)
            if v is None:
                return False
            nums[s.name] = v
        if not compute_until(len(move.ops) - 1):
            return False

        # Commit: name the new numbers and steps, write the question clause and the step sentences.
        fill = {**self.ctx, **{k: str(v) for k, v in nums.items()}}
        names: dict[str, str] = {}
        for s in move.slots:
            names[s.name] = _py_name(s.var, self.ctx, self.used)
            self.values[names[s.name]] = nums[s.name]
            self.givens.append((names[s.name], nums[s.name]))
        names["cur"], names["prev"] = self.cur, self.prev
        for k, (o, r) in enumerate(zip(move.ops, results)):
            left, right = names[o.left], names[o.right]
            names[f"@{k}"] = var = _py_name(o.var, self.ctx, self.used)
            text = o.sentence.format_map({**fill, "calc": "{calc}"})
            self.steps.append(Step(var, left, o.op, right, text))
            self.values[var] = r
        if move.clause:
            self.clauses.append(_capitalize(move.clause.format_map(fill)))
        self.prev, self.cur = self.cur, (names[f"@{len(move.ops) - 1}"] if move.ops else names[move.slots[0].name])
        self.last, self.fill = move, fill
        return True


def _capitalize(s: str) -> str:
    return s[:1].upper() + s[1:]


def _draw(rng: random.Random, p: _Params) -> _Draft | None:
    """One random story with between min_steps and max_steps steps, or None when the walk hits a dead end."""
    kind = rng.choice(KINDS)
    story = _KINDS[kind]
    names = _UNSEEN_NAMES if p.unseen_names else _NAMES
    name, pronoun = rng.choice(names)
    friend = rng.choice([n for n, _ in names if n != name])
    (obj, objs), (obj2, objs2) = rng.sample(story.unseen_objects if p.unseen_names else story.objects, 2)
    ctx = {"name": name, "friend": friend, "obj": obj, "objs": objs, "obj2": obj2, "objs2": objs2,
           **_PRONOUNS[pronoun]}
    draft = _Draft(kind, ctx)
    target = rng.randint(p.min_steps, p.max_steps)
    role, used_moves = "start", set()
    while len(draft.steps) < target:
        left = target - len(draft.steps)
        options = [m for m in story.moves if role in m.needs and m not in used_moves and len(m.ops) <= left
                   and (m.gives != "end" or len(m.ops) == left)]  # "end" moves only come last
        rng.shuffle(options)
        for m in options:
            if draft.try_move(m, rng, p):
                role = m.gives
                used_moves.add(m)
                break
        else:
            return None
    return draft


def computation_key(givens: list[tuple[str, int]] | tuple, steps: list[Step] | tuple) -> str:
    """The computation with every name replaced by its position: "12,5,3|+g0g1;-s0g2". Equal for problems
    that differ only in names, objects or story (e.g. "eats 4, then shares among 4 friends" and "keeps 4 and
    shares the rest among 4 friends")."""
    pos = {var: f"g{i}" for i, (var, _) in enumerate(givens)} | {s.var: f"s{j}" for j, s in enumerate(steps)}
    return ",".join(str(v) for _, v in givens) + "|" + ";".join(f"{s.op}{pos[s.left]}{pos[s.right]}" for s in steps)


def _split_of(key: str, test_fraction: float) -> str:
    """'test' or 'train' from a hash of the computation key (a fixed salt: independent of the seed)."""
    h = hashlib.blake2b(f"{SPLIT_SALT}|{key}".encode(), digest_size=8).digest()
    return "test" if int.from_bytes(h, "big") / 2 ** 64 < test_fraction else "train"


def generate(split: Split, n: int, cfg: SyntheticConfig | None = None) -> list[SyntheticProblem]:
    """The first `n` problems of `split` for `cfg.seed` (a longer list extends a shorter one: same prefix).

    train/test: cfg.min_steps..max_steps steps, numbers up to max_number/max_factor; hard: the hard_* settings;
    longer: the train/test numbers with exactly max_steps + 1 steps; larger: the train/test steps with every
    stated amount in (max_number, 2 max_number]; renamed: the train/test settings with unseen people and objects. All but train are drawn from the held-out side of the hash
    split. Problems are unique within a split.
    """
    cfg = cfg or SyntheticConfig()
    if split not in SPLITS:
        raise ValueError(f"synthetic split must be one of {SPLITS}, got {split!r}")
    if n < 0:
        raise ValueError(f"synthetic: n must be >= 0, got {n}")
    cfg.check()
    p = _params(split, cfg)
    want = "train" if split == "train" else "test"
    rng = random.Random(f"echochamber-synthetic/{cfg.seed}/{split}")  # str seeds are stable across processes
    out: list[SyntheticProblem] = []
    seen: set[str] = set()
    attempts, max_attempts = 0, 200 * n + 10_000
    while len(out) < n:
        attempts += 1
        if attempts > max_attempts:
            raise ValueError(f"synthetic {split}: found only {len(out)} of {n} distinct problems in {max_attempts} "
                             f"draws; widen the number ranges or steps, or ask for fewer")
        d = _draw(rng, p)
        if d is None:
            continue
        key = computation_key(d.givens, d.steps)
        if key in seen or _split_of(key, cfg.test_fraction) != want:
            continue
        seen.add(key)
        question = " ".join(d.clauses + [d.last.ask.format_map(d.fill)])
        conclusion = "Thus " + d.last.tell.format_map({**d.fill, "ans": "{answer}"})
        out.append(SyntheticProblem(
            id=f"syn-{split}-{len(out):06d}", split=split, kind=d.kind, question=question,
            answer=d.values[d.cur], givens=tuple(d.givens), steps=tuple(d.steps), conclusion=conclusion))
    return out


def load(split: Split, n: int | None = None, cfg: SyntheticConfig | None = None) -> list[Problem]:
    """`generate` as `Problem`s; n=None gives cfg.train_size (train) or cfg.test_size (the others) problems."""
    cfg = cfg or SyntheticConfig()
    if n is None:
        n = cfg.train_size if split == "train" else cfg.test_size
    return [sp.to_problem() for sp in generate(split, n, cfg)]


# ----------------------------------------------------------------------------- solutions

_PY_OP = {"+": "+", "-": "-", "*": "*", "/": "//"}  # exact division: // keeps ints (and the printed output) exact


def evaluate(problem: SyntheticProblem, ops: dict[int, str] | None = None) -> list[int] | None:
    """Every step's value, with step i using `ops[i]` instead of its own op; None if a step is not exact."""
    values = dict(problem.givens)
    out = []
    for i, s in enumerate(problem.steps):
        r = _apply((ops or {}).get(i, s.op), values[s.left], values[s.right])
        if r is None:
            return None
        values[s.var] = r
        out.append(r)
    return out


_REWRITE_RE = re.compile(r"^([-+*/])->([-+*/])$")


def parse_rewrite(rewrite: str, where: str = "systematic_error") -> tuple[str, str]:
    """"*->+" -> ("*", "+"): a systematic error's operation and the one written instead; bad input raises
    ValueError naming `where` (the config key)."""
    m = _REWRITE_RE.match(str(rewrite).replace(" ", ""))
    if not m or m.group(1) == m.group(2):
        raise ValueError(f"{where}: expected 'A->B' with two different operations of + - * /, e.g. '*->+'; "
                         f"got {rewrite!r}")
    return m.group(1), m.group(2)


def systematic_ops(problem: SyntheticProblem, rewrite: str | None) -> dict[int, str]:
    """The steps a systematic error "A->B" rewrites: {step index: B}.

    Every step whose operation is A uses B instead, except a step whose rewrite would make the computation
    inexact or non-positive (a division that no longer divides, a subtraction that goes to 0 or below, in that
    step or any later one fed by its value): that step keeps A. The steps are taken in order, each rewritten
    when the whole computation stays exact and positive with it and the rewrites already made, and passes
    repeat until none is added, so the result is always a valid computation to which no further step can be
    rewritten, the same for a problem in every document. "->+" and "->*" never fail on their own step; what
    fails is a later "-" or "/" fed by the changed value (e.g. *->+ makes 4 * 6 = 24 a 10, and "gives 15 away"
    then goes below zero): the exceptions are counted by `systematic_share`.
    """
    if not rewrite:
        return {}
    a, b = parse_rewrite(rewrite)
    ops: dict[int, str] = {}
    while True:
        added = False
        for i, s in enumerate(problem.steps):
            if s.op == a and i not in ops and evaluate(problem, ops | {i: b}) is not None:
                ops[i], added = b, True
        if not added:
            return dict(sorted(ops.items()))


def systematic_share(problems: list[SyntheticProblem], rewrite: str) -> tuple[int, int]:
    """(steps rewritten, steps with the rewrite's operation) over `problems`: how systematic the error is."""
    a, _ = parse_rewrite(rewrite)
    return (sum(len(systematic_ops(p, rewrite)) for p in problems),
            sum(s.op == a for p in problems for s in p.steps))


def wrong_step(problem: SyntheticProblem, rng: random.Random, base: dict[int, str] | None = None) -> dict[int, str]:
    """Pick one step and a wrong operation for it such that the whole (wrong) computation stays exact and
    positive and the final answer differs: {step index: wrong op}. base: the ops the solution already uses
    instead of the true ones (a systematic error); the wrong step is one more change on top of them, and its
    answer differs from both the true one and base's."""
    base = base or {}
    true, start = evaluate(problem), evaluate(problem, base)
    bound = 10 * max(start) + 1000  # keep the wrong numbers of a similar size
    options = [(i, op) for i, s in enumerate(problem.steps) for op in _PY_OP if op != base.get(i, s.op)]
    rng.shuffle(options)
    for i, op in options:
        vals = evaluate(problem, base | {i: op})
        if vals is not None and vals[-1] not in (true[-1], start[-1]) and max(vals) <= bound:
            return {i: op}
    # Unreachable for generated problems: the last step can always take + or * (both exact and positive).
    raise ValueError(f"{problem.id}: no wrong step keeps the computation exact")


def render_solution(problem: SyntheticProblem, fmt: str, *, error_rate: float = 0.0,
                    rng: random.Random | None = None, systematic: str | None = None) -> str:
    """The solution of `problem` in format tinygsm | omi1 | text (without the question).

    systematic: a rewrite "A->B" done in every step it can be (`systematic_ops`). With probability `error_rate`
    one more step uses a wrong operation. Either way everything after a changed step follows its value (a
    consistent wrong answer: later steps, the printed output, the box). rng: the randomness of the random
    error; None = a fixed per-problem stream.
    """
    from .. import formats  # the module that owns the formats' exact layout

    if fmt not in FORMAT_NAMES:
        raise ValueError(f"unknown format {fmt!r}; expected one of {FORMAT_NAMES}")
    if not 0.0 <= error_rate <= 1.0:
        raise ValueError(f"error_rate must be in [0, 1], got {error_rate}")
    ops = systematic_ops(problem, systematic)
    if error_rate > 0.0:
        rng = rng or random.Random(f"{problem.id}/{fmt}/errors")
        if rng.random() < error_rate:
            ops |= wrong_step(problem, rng, ops)
    values = evaluate(problem, ops)
    answer = str(values[-1])
    steps = [(s, ops.get(i, s.op), v) for i, (s, v) in enumerate(zip(problem.steps, values))]
    known = dict(problem.givens) | {s.var: v for s, _, v in steps}

    if fmt == "text":
        # The model must do this arithmetic itself: "After that she has 24 - 5 = 19 pencils left."
        sentences = [s.text.replace("{calc}", f"{known[s.left]} {op} {known[s.right]} = {v}") for s, op, v in steps]
        return formats.render_text(sentences + [problem.conclusion], answer)
    # Code: the given numbers as named variables, then one line per step; the interpreter does the arithmetic.
    code = [f"{var} = {value}" for var, value in problem.givens]
    code += [f"{s.var} = {s.left} {_PY_OP[op]} {s.right}" for s, op, _ in steps]
    last = problem.steps[-1].var
    if fmt == "tinygsm":
        return formats.render_tinygsm(problem.question, code + [f"result = {last}"])
    return formats.render_omi1(code + [last], answer, answer, problem.conclusion)
