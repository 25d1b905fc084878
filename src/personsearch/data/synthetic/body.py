"""The body and what is worn on it: legs and lower garment, torso and upper garment, arms, head.

Each drawer paints one part over what is already on the canvas, so the caller's order is the
depth order (back to front). None of them draws random numbers except the arms (their swing).
"""

from __future__ import annotations

import random

from personsearch.data.synthetic.canvas import Canvas, Color, Point, contrast, shade
from personsearch.data.synthetic.figure import Arm, Figure, Leg
from personsearch.data.synthetic.look import Look

#: Where each upper garment ends, as a fraction of the body height.
HEM_FRAC: dict[str, float] = {
    "coat": 0.72,
    "dress": 0.71,
    "jacket": 0.51,
    "sweater": 0.5,
    "shirt": 0.5,
    "t-shirt": 0.49,
}
#: How far a long garment widens towards its hem, as a factor on the waist width.
HEM_FLARE: dict[str, float] = {"coat": 1.3, "dress": 1.6, "jacket": 1.08}

_EYE: Color = (30, 24, 22)


def draw_hair_behind_shoulders(canvas: Canvas, fig: Figure, look: Look) -> None:
    """Long hair falling behind the shoulders, seen past the head from the front or side."""
    head_x, head_y = fig.head_centre
    rx = fig.head_rx
    canvas.polygon(
        [
            (head_x - rx * 1.1, head_y),
            (head_x + rx * 1.1, head_y),
            (head_x + rx * 1.25, fig.y(0.27)),
            (head_x - rx * 1.25, fig.y(0.27)),
        ],
        look.hair,
    )


def draw_legs(canvas: Canvas, fig: Figure, lower_type: str, look: Look) -> None:
    """Both legs with what covers them, and the shoes: trousers, or skin under shorts or a skirt."""
    leg_color = look.lower if lower_type in ("pants", "jeans") else look.skin
    for leg in fig.legs():
        _draw_leg(canvas, fig, leg, lower_type, leg_color, look)


def _draw_leg(canvas: Canvas, fig: Figure, leg: Leg, lower_type: str, leg_color: Color, look: Look) -> None:
    unit = fig.unit
    width_hip, width_ankle = fig.leg_width_hip, fig.leg_width_ankle
    width_knee = (width_hip + width_ankle) / 2
    hip, knee, ankle = leg
    canvas.limb(hip, knee, width_hip, width_knee, leg_color)
    canvas.limb(knee, ankle, width_knee, width_ankle, leg_color)
    if lower_type == "shorts":
        canvas.limb(
            hip,
            ((hip[0] + knee[0] * 2) / 3, fig.hip_y + (fig.knee_y - fig.hip_y) * 0.8),
            width_hip * 1.15,
            width_hip * 1.1,
            look.lower,
        )
    if lower_type == "jeans":  # outer seam
        canvas.draw.line([hip, knee, ankle], fill=shade(look.lower, 1.25), width=max(1, int(0.006 * unit)))
    if lower_type == "pants":  # crease
        canvas.draw.line([hip, knee, ankle], fill=shade(look.lower, 0.8), width=max(1, int(0.004 * unit)))
    _draw_shoe(canvas, fig, ankle, look.shoes)


def _draw_shoe(canvas: Canvas, fig: Figure, ankle: Point, color: Color) -> None:
    """A flat oval under the ankle, stretched towards the toe when seen from the side."""
    unit = fig.unit
    toe = 0.045 * unit if fig.side else 0.0
    canvas.ellipse((ankle[0] + toe * 0.6, fig.ankle_y + 0.02 * unit), 0.032 * unit + toe * 0.5, 0.02 * unit, color)


def draw_seat_or_skirt(canvas: Canvas, fig: Figure, lower_type: str, look: Look) -> None:
    """The lower garment between waist and legs: a seat joining trouser legs, or a skirt."""
    unit, cx = fig.unit, fig.centre_x
    half_waist, waist_y = fig.half_waist, fig.waist_y
    if lower_type in ("pants", "jeans", "shorts"):
        canvas.polygon(
            [
                (cx - half_waist, waist_y),
                (cx + half_waist, waist_y),
                (cx + half_waist * 1.05, fig.hip_y + 0.04 * unit),
                (cx - half_waist * 1.05, fig.hip_y + 0.04 * unit),
            ],
            look.lower,
        )
    if lower_type == "skirt":
        half_hem = 0.135 * unit * fig.build if not fig.side else 0.09 * unit
        canvas.polygon(
            [
                (cx - half_waist, waist_y),
                (cx + half_waist, waist_y),
                (cx + half_hem, fig.y(0.7)),
                (cx - half_hem, fig.y(0.7)),
            ],
            look.lower,
        )


def draw_upper_garment(canvas: Canvas, fig: Figure, upper_type: str, pattern: str, look: Look) -> None:
    """The torso in the upper garment, patterned, with the details that tell garments apart.

    Each kind carries a cue that survives the reduction to a 32-pixel-wide crop from every
    viewpoint: bare forearms (t-shirt, dress), a pale collar (shirt), broad ribbed bands (sweater),
    a dark collar, a waistband and an open front over a contrasting layer (jacket), knee length
    and a belt (coat).
    """
    unit, cx = fig.unit, fig.centre_x
    half_sh, half_waist = fig.half_shoulder, fig.half_waist
    shoulder_y, waist_y = fig.shoulder_y, fig.waist_y
    hem_frac = HEM_FRAC[upper_type]
    hem_y = fig.y(hem_frac)
    half_hem = half_waist * max(HEM_FLARE.get(upper_type, 1.0), 1.05)
    torso = [
        (cx - half_sh, shoulder_y),
        (cx + half_sh, shoulder_y),
        (cx + half_waist * 1.05, waist_y),
        (cx + half_hem, hem_y),
        (cx - half_hem, hem_y),
        (cx - half_waist * 1.05, waist_y),
    ]
    canvas.polygon(torso, look.upper, pattern, look.stripe, period=0.036 * unit)
    band = shade(look.upper, 0.62)
    if upper_type == "sweater":  # broad ribbed hem
        canvas.draw.rectangle([cx - half_hem, hem_y - 0.045 * unit, cx + half_hem, hem_y], fill=band)
    elif upper_type == "jacket":  # waistband
        canvas.draw.rectangle([cx - half_hem, hem_y - 0.03 * unit, cx + half_hem, hem_y], fill=band)
    elif upper_type == "coat":  # belt, and a vent at the back
        canvas.draw.rectangle(
            [cx - half_waist * 1.08, waist_y - 0.05 * unit, cx + half_waist * 1.08, waist_y - 0.02 * unit], fill=band
        )
        if fig.view == "back":
            canvas.draw.line([(cx, waist_y), (cx, hem_y)], fill=band, width=max(1, int(0.008 * unit)))
    if upper_type in ("shirt", "jacket"):  # a collar seen from every side: pale (shirt) or dark (jacket)
        canvas.draw.rectangle(
            [cx - 0.05 * unit, shoulder_y - 0.012 * unit, cx + 0.05 * unit, shoulder_y + 0.018 * unit],
            fill=_collar_color(look) if upper_type == "shirt" else band,
        )
    if fig.view == "front":
        _draw_garment_front(canvas, fig, upper_type, hem_frac, look)


def _collar_color(look: Look) -> Color:
    """White on a garment of any colour but the palest, where it is a clear grey."""
    return (150, 150, 154) if sum(look.upper) > 600 else (240, 240, 236)


def _draw_garment_front(canvas: Canvas, fig: Figure, upper_type: str, hem_frac: float, look: Look) -> None:
    """An open front over a contrasting layer (jacket), lapels and two rows of buttons (coat), a
    pointed collar and buttons (shirt), or a round neckline (ribbed on a sweater)."""
    unit, cx, shoulder_y = fig.unit, fig.centre_x, fig.shoulder_y
    detail = shade(look.upper, 0.62 if sum(look.upper) > 200 else 1.8)
    line_width = max(1, int(0.008 * unit))
    y = fig.y
    if upper_type == "jacket":
        canvas.polygon(  # the layer underneath, showing down the open front
            [(cx - 0.035 * unit, shoulder_y), (cx + 0.035 * unit, shoulder_y), (cx + 0.028 * unit, y(hem_frac)),
             (cx - 0.028 * unit, y(hem_frac))],
            contrast(look.upper),
        )
        for sign in (-1.0, 1.0):
            canvas.draw.line([(cx + sign * 0.035 * unit, shoulder_y), (cx + sign * 0.028 * unit, y(hem_frac))],
                             fill=detail, width=line_width)
    elif upper_type == "coat":
        for sign in (-1.0, 1.0):
            canvas.polygon(
                [(cx + sign * 0.055 * unit, shoulder_y - 0.005 * unit), (cx, y(0.28)),
                 (cx + sign * 0.025 * unit, y(0.2))],
                detail,
            )
        for frac in (0.3, 0.38, 0.52, 0.6):
            for offset in (-0.03, 0.03):
                canvas.ellipse((cx + offset * unit, y(frac)), 0.008 * unit, 0.008 * unit, detail)
    elif upper_type == "shirt":
        collar = _collar_color(look)
        for sign in (-1.0, 1.0):
            canvas.polygon(
                [(cx + sign * 0.05 * unit, shoulder_y - 0.01 * unit), (cx, y(0.215)),
                 (cx + sign * 0.04 * unit, y(0.225))],
                collar,
            )
        canvas.draw.line([(cx, y(0.215)), (cx, y(hem_frac))], fill=detail, width=line_width)
        for frac in (0.26, 0.33, 0.4, 0.47):
            canvas.ellipse((cx, y(frac)), 0.005 * unit, 0.005 * unit, detail)
    else:  # round neckline; a sweater's is ribbed
        if upper_type == "sweater":
            canvas.draw.chord(
                [cx - 0.045 * unit, shoulder_y - 0.04 * unit, cx + 0.045 * unit, shoulder_y + 0.035 * unit],
                0,
                180,
                fill=shade(look.upper, 0.62),
            )
        canvas.draw.chord(
            [cx - 0.03 * unit, shoulder_y - 0.03 * unit, cx + 0.03 * unit, shoulder_y + 0.025 * unit],
            0,
            180,
            fill=look.skin,
        )


def draw_arms(canvas: Canvas, fig: Figure, upper_type: str, look: Look, rng: random.Random) -> list[Point]:
    """The arms in view, sleeved in the upper garment, with hands; returns the hand positions."""
    hands: list[Point] = []
    for sign in fig.arm_signs:
        arm = fig.arm(sign, rng)
        _draw_arm(canvas, fig, arm, upper_type, look)
        hands.append(arm.hand)
    return hands


def _draw_arm(canvas: Canvas, fig: Figure, arm: Arm, upper_type: str, look: Look) -> None:
    """Bare skin below short sleeves (t-shirt, dress), a full sleeve otherwise; then the hand."""
    width_shoulder, width_wrist = fig.arm_width_shoulder, fig.arm_width_wrist
    width_elbow = (width_shoulder + width_wrist) / 2
    shoulder, elbow, hand = arm
    skin, sleeve_color = look.skin, look.upper
    if upper_type in ("t-shirt", "dress"):
        mid = ((shoulder[0] + elbow[0]) / 2, (shoulder[1] + elbow[1]) / 2)
        canvas.limb(shoulder, elbow, width_shoulder * 0.92, width_wrist, skin)
        canvas.limb(elbow, hand, width_wrist, width_wrist * 0.9, skin)
        canvas.limb(shoulder, mid, width_shoulder * 1.1, width_shoulder * 1.05, sleeve_color)
    else:
        canvas.limb(shoulder, elbow, width_shoulder, width_elbow, sleeve_color)
        canvas.limb(elbow, hand, width_elbow, width_wrist, sleeve_color)
        if upper_type in ("sweater", "jacket"):  # ribbed cuff
            canvas.limb(hand, hand, width_wrist * 1.3, width_wrist * 1.3, shade(look.upper, 0.62))
    canvas.ellipse(hand, width_wrist * 0.6, width_wrist * 0.7, skin)


def draw_head(canvas: Canvas, fig: Figure, long_hair: bool, look: Look) -> None:
    """Neck and head: the back of the head with its hair, or a face under a hair cap."""
    unit = fig.unit
    canvas.limb((fig.centre_x, fig.y(0.12)), (fig.centre_x, fig.shoulder_y), 0.04 * unit, 0.045 * unit, look.skin)
    if fig.view == "back":
        _draw_back_of_head(canvas, fig, long_hair, look)
    else:
        _draw_face(canvas, fig, long_hair, look)


def _draw_back_of_head(canvas: Canvas, fig: Figure, long_hair: bool, look: Look) -> None:
    head_x, head_y = fig.head_centre
    rx, ry = fig.head_rx, fig.head_ry
    canvas.ellipse(fig.head_centre, rx, ry, look.skin)
    canvas.ellipse((head_x, head_y - ry * 0.05), rx * 1.06, ry * 1.02, look.hair)
    if long_hair:
        canvas.polygon(
            [
                (head_x - rx * 1.06, head_y),
                (head_x + rx * 1.06, head_y),
                (head_x + rx * 1.2, fig.y(0.28)),
                (head_x - rx * 1.2, fig.y(0.28)),
            ],
            look.hair,
        )


def _draw_face(canvas: Canvas, fig: Figure, long_hair: bool, look: Look) -> None:
    """The head from the front or side: skin, a hair cap over the top, then the features."""
    head_x, head_y = fig.head_centre
    rx, ry = fig.head_rx, fig.head_ry
    canvas.ellipse(fig.head_centre, rx, ry, look.skin)
    # Hair cap over the top of the head (pieslice = the upper half, plus a fringe).
    canvas.draw.pieslice(
        [head_x - rx * 1.08, head_y - ry * 1.1, head_x + rx * 1.08, head_y + ry * 0.9],
        180,
        360,
        fill=look.hair,
    )
    if fig.side:
        _draw_profile(canvas, fig, look)
    else:
        _draw_front_face(canvas, fig, long_hair, look)


def _draw_profile(canvas: Canvas, fig: Figure, look: Look) -> None:
    """Seen from the side: hair over the back of the head, a nose, one eye."""
    head_x, head_y = fig.head_centre
    rx, ry = fig.head_rx, fig.head_ry
    canvas.ellipse((head_x - rx * 0.45, head_y - ry * 0.05), rx * 0.6, ry * 0.75, look.hair)
    canvas.ellipse((head_x + rx * 0.98, head_y + ry * 0.15), rx * 0.14, ry * 0.12, shade(look.skin, 0.92))
    canvas.ellipse((head_x + rx * 0.5, head_y + ry * 0.02), rx * 0.09, ry * 0.08, _EYE)


def _draw_front_face(canvas: Canvas, fig: Figure, long_hair: bool, look: Look) -> None:
    """Seen from the front: two eyes, a mouth, and strands framing the face if the hair is long."""
    head_x, head_y = fig.head_centre
    rx, ry = fig.head_rx, fig.head_ry
    for eye_offset in (-0.38, 0.38):
        canvas.ellipse((head_x + eye_offset * rx, head_y + ry * 0.05), rx * 0.1, ry * 0.08, _EYE)
    canvas.draw.line(
        [(head_x - rx * 0.25, head_y + ry * 0.5), (head_x + rx * 0.25, head_y + ry * 0.5)],
        fill=shade(look.skin, 0.7),
        width=max(1, int(0.004 * fig.unit)),
    )
    if long_hair:
        for sign in (-1.0, 1.0):
            canvas.polygon(
                [
                    (head_x + sign * rx * 1.08, head_y - ry * 0.1),
                    (head_x + sign * rx * 0.75, head_y - ry * 0.1),
                    (head_x + sign * rx * 0.9, fig.y(0.22)),
                    (head_x + sign * rx * 1.3, fig.y(0.22)),
                ],
                look.hair,
            )
