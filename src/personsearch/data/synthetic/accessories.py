"""What a person wears or carries besides clothes: headwear, a bag, an item in the hand.

These are the small details that tell near-identical identities apart, so each one is drawn so
that it still reads after the image is reduced to the output size.
"""

from __future__ import annotations

import random

from personsearch.data.synthetic.canvas import Canvas, Point, shade
from personsearch.data.synthetic.figure import Figure
from personsearch.data.synthetic.look import Look


def draw_backpack_behind(canvas: Canvas, fig: Figure, look: Look) -> None:
    """The pack behind the body, drawn before it: a block behind the back seen from the side, and
    from the front its sides showing past the torso (the straps follow with the body)."""
    unit, cx, half_sh = fig.unit, fig.centre_x, fig.half_shoulder
    if fig.side:
        box = [cx - half_sh - 0.09 * unit, fig.y(0.18), cx - half_sh + 0.02 * unit, fig.y(0.44)]
    else:
        box = [cx - half_sh * 1.1, fig.y(0.19), cx + half_sh * 1.1, fig.y(0.45)]
    canvas.draw.rounded_rectangle(box, radius=0.02 * unit, fill=look.bag)


def draw_headwear(canvas: Canvas, fig: Figure, headwear: str, look: Look) -> None:
    """A brimmed hat or a cap (with its peak when seen from the front or side), over the hair."""
    if headwear == "hat":
        _draw_hat(canvas, fig, look)
    elif headwear == "cap":
        _draw_cap(canvas, fig, look)


def _draw_hat(canvas: Canvas, fig: Figure, look: Look) -> None:
    head_x, head_y = fig.head_centre
    rx, ry = fig.head_rx, fig.head_ry
    canvas.ellipse((head_x, head_y - ry * 0.55), rx * 1.75, ry * 0.22, look.headwear)  # brim
    canvas.draw.rounded_rectangle(
        [head_x - rx * 0.95, head_y - ry * 1.35, head_x + rx * 0.95, head_y - ry * 0.5],
        radius=rx * 0.35,
        fill=look.headwear,
    )
    canvas.draw.rectangle(  # band
        [head_x - rx * 0.95, head_y - ry * 0.75, head_x + rx * 0.95, head_y - ry * 0.6],
        fill=shade(look.headwear, 0.7),
    )


def _draw_cap(canvas: Canvas, fig: Figure, look: Look) -> None:
    head_x, head_y = fig.head_centre
    rx, ry = fig.head_rx, fig.head_ry
    canvas.draw.pieslice(
        [head_x - rx * 1.08, head_y - ry * 1.18, head_x + rx * 1.08, head_y + ry * 0.5],
        180,
        360,
        fill=look.headwear,
    )
    if fig.side:  # peak pointing forward
        canvas.polygon(
            [
                (head_x + rx * 0.6, head_y - ry * 0.42),
                (head_x + rx * 1.75, head_y - ry * 0.3),
                (head_x + rx * 0.6, head_y - ry * 0.2),
            ],
            shade(look.headwear, 0.8),
        )
    elif fig.view == "front":  # peak seen end-on
        canvas.ellipse(
            (head_x, head_y - ry * 0.38),
            rx * 0.95,
            ry * 0.16,
            shade(look.headwear, 0.8),
        )


def draw_bag(canvas: Canvas, fig: Figure, bag: str, look: Look, hands: list[Point]) -> None:
    """A backpack (its straps from the front), a shoulder bag at the hip, or a handbag in the first hand."""
    if bag == "backpack":
        _draw_backpack(canvas, fig, look)
    elif bag == "shoulder bag":
        _draw_shoulder_bag(canvas, fig, look)
    elif bag == "handbag":
        _draw_handbag(canvas, fig, look, hands[0])


def _draw_backpack(canvas: Canvas, fig: Figure, look: Look) -> None:
    """The pack itself from behind, two straps from the front, one strap from the side."""
    unit, cx, half_sh, shoulder_y = fig.unit, fig.centre_x, fig.half_shoulder, fig.shoulder_y
    strap = fig.strap_width
    if fig.view == "back":
        canvas.draw.rounded_rectangle(
            [cx - half_sh * 0.82, fig.y(0.2), cx + half_sh * 0.82, fig.y(0.44)], radius=0.025 * unit, fill=look.bag
        )
        canvas.draw.rounded_rectangle(  # front pocket
            [cx - half_sh * 0.6, fig.y(0.33), cx + half_sh * 0.6, fig.y(0.42)],
            radius=0.015 * unit,
            fill=shade(look.bag, 0.8),
        )
    elif fig.view == "front":
        for strap_offset in (-0.55, 0.55):
            canvas.draw.line(
                [(cx + strap_offset * half_sh, shoulder_y), (cx + strap_offset * half_sh * 0.9, fig.y(0.4))],
                fill=look.bag,
                width=strap * 3,
            )
    else:
        canvas.draw.line(
            [(cx - 0.01 * unit, shoulder_y), (cx - 0.02 * unit, fig.y(0.38))], fill=look.bag, width=strap * 3
        )


def _draw_shoulder_bag(canvas: Canvas, fig: Figure, look: Look) -> None:
    """A strap from the far shoulder across the body to a bag at the near hip."""
    unit, cx = fig.unit, fig.centre_x
    far_shoulder_x = cx + fig.half_shoulder * (0.6 if not fig.side else 0.2)
    bag_centre = (cx - fig.half_waist * 1.25, fig.y(0.5))
    canvas.draw.line(
        [(far_shoulder_x, fig.shoulder_y), bag_centre], fill=shade(look.bag, 0.85), width=fig.strap_width * 2
    )
    canvas.draw.rounded_rectangle(
        [
            bag_centre[0] - 0.06 * unit,
            bag_centre[1] - 0.045 * unit,
            bag_centre[0] + 0.055 * unit,
            bag_centre[1] + 0.05 * unit,
        ],
        radius=0.01 * unit,
        fill=look.bag,
    )


def _draw_handbag(canvas: Canvas, fig: Figure, look: Look, hand: Point) -> None:
    """A handle arc in the hand and a trapezoid bag hanging below it."""
    unit = fig.unit
    hand_x, hand_y = hand
    canvas.draw.arc(
        [hand_x - 0.03 * unit, hand_y - 0.03 * unit, hand_x + 0.03 * unit, hand_y + 0.03 * unit],
        180,
        360,
        fill=shade(look.bag, 0.8),
        width=fig.strap_width,
    )
    canvas.polygon(
        [
            (hand_x - 0.05 * unit, hand_y + 0.005 * unit),
            (hand_x + 0.05 * unit, hand_y + 0.005 * unit),
            (hand_x + 0.065 * unit, hand_y + 0.085 * unit),
            (hand_x - 0.065 * unit, hand_y + 0.085 * unit),
        ],
        look.bag,
    )


def draw_carried_item(
    canvas: Canvas, fig: Figure, item: str, has_bag: bool, look: Look, rng: random.Random, hand: Point
) -> None:
    """A phone or an umbrella in ``hand``; how it is held is drawn from ``rng``."""
    if item == "phone":
        _draw_phone(canvas, fig, look, rng, hand)
    elif item == "umbrella":
        _draw_umbrella(canvas, fig, has_bag, look, rng, hand)


def _draw_phone(canvas: Canvas, fig: Figure, look: Look, rng: random.Random, hand: Point) -> None:
    """Raised to the face or held low; fingers over its lower edge."""
    unit = fig.unit
    hand_x, hand_y = hand
    phone_x, phone_y = (hand_x, hand_y - 0.03 * unit) if rng.random() < 0.6 else (hand_x, hand_y)
    canvas.draw.rectangle(
        [phone_x - 0.016 * unit, phone_y - 0.03 * unit, phone_x + 0.016 * unit, phone_y + 0.012 * unit],
        fill=(20, 20, 26),
    )
    canvas.draw.rectangle(  # screen
        [phone_x - 0.011 * unit, phone_y - 0.025 * unit, phone_x + 0.011 * unit, phone_y + 0.006 * unit],
        fill=(90, 140, 200),
    )
    fingers_r = fig.arm_width_wrist * 0.5
    canvas.ellipse((phone_x, phone_y + 0.01 * unit), fingers_r, fingers_r, look.skin)


def _draw_umbrella(canvas: Canvas, fig: Figure, has_bag: bool, look: Look, rng: random.Random, hand: Point) -> None:
    """Open above the head (in the bag's colour when there is a bag), or closed like a cane."""
    unit = fig.unit
    hand_x, hand_y = hand
    strap = fig.strap_width
    if rng.random() < 0.35:  # open, held above the head
        shaft_top = (fig.centre_x + 0.02 * unit, fig.top - 0.06 * unit)
        canvas.draw.line([(hand_x, hand_y), shaft_top], fill=(40, 40, 40), width=strap)
        canvas.draw.pieslice(
            [
                shaft_top[0] - 0.24 * unit,
                shaft_top[1] - 0.02 * unit,
                shaft_top[0] + 0.24 * unit,
                shaft_top[1] + 0.16 * unit,
            ],
            180,
            360,
            fill=shade(look.bag, 1.0) if has_bag else (40, 40, 60),
        )
    else:  # closed, held like a cane
        tip = (hand_x + 0.06 * unit, hand_y + 0.28 * unit)
        canvas.limb((hand_x, hand_y), tip, 0.028 * unit, 0.01 * unit, (36, 36, 48))
        canvas.draw.arc(
            [hand_x - 0.03 * unit, hand_y - 0.05 * unit, hand_x + 0.01 * unit, hand_y],
            180,
            360,
            fill=(30, 30, 30),
            width=strap,
        )
