"""Where the parts of one drawn person sit: body proportions placed on the canvas, and a pose.

Every length is a fraction of ``unit``, the body height from the top of the head to the feet, so
one set of proportions serves every scale; ``build`` widens or narrows the body for an identity.
The part drawers read their anchor points from here instead of repeating the arithmetic.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import NamedTuple

from personsearch.data.synthetic.canvas import Point

# Heights as fractions of the body height, measured down from the top of the head.
SHOULDER_FRAC = 0.175
WAIST_FRAC = 0.47
HIP_FRAC = 0.5
KNEE_FRAC = 0.72
ANKLE_FRAC = 0.955
HEAD_CENTRE_FRAC = 0.075


class Leg(NamedTuple):
    """The joints of one leg, top to bottom."""

    hip: Point
    knee: Point
    ankle: Point


class Arm(NamedTuple):
    """The joints of one arm, top to bottom."""

    shoulder: Point
    elbow: Point
    hand: Point


@dataclass(frozen=True)
class Figure:
    """One person's placement (centre, top, height), build, viewpoint and pose, in canvas pixels."""

    centre_x: float
    top: float  # y of the top of the head
    unit: float  # body height
    build: float  # width factor of this identity (``Look.width``)
    view: str  # "front", "back" or "side" (facing right)
    stride: float  # leg angle from the vertical, radians
    swing: float  # arm angle from the vertical, radians
    shoulders: float = 1.0  # shoulder width against the waist (``Look.shoulders``): broader for men

    @property
    def side(self) -> bool:
        return self.view == "side"

    def y(self, frac: float) -> float:
        """The canvas y of a height given as a fraction of the body height."""
        return self.top + frac * self.unit

    @property
    def shoulder_y(self) -> float:
        return self.y(SHOULDER_FRAC)

    @property
    def waist_y(self) -> float:
        return self.y(WAIST_FRAC)

    @property
    def hip_y(self) -> float:
        return self.y(HIP_FRAC)

    @property
    def knee_y(self) -> float:
        return self.y(KNEE_FRAC)

    @property
    def ankle_y(self) -> float:
        return self.y(ANKLE_FRAC)

    @property
    def half_shoulder(self) -> float:
        """Half the shoulder width (narrower seen from the side)."""
        return (0.07 if self.side else 0.118 * self.shoulders) * self.unit * self.build

    @property
    def half_waist(self) -> float:
        return (0.06 if self.side else 0.088) * self.unit * self.build

    @property
    def head_centre(self) -> Point:
        return (self.centre_x + (0.01 * self.unit if self.side else 0.0), self.y(HEAD_CENTRE_FRAC))

    @property
    def head_rx(self) -> float:
        return 0.054 * self.unit

    @property
    def head_ry(self) -> float:
        return 0.066 * self.unit

    @property
    def leg_width_hip(self) -> float:
        return 0.066 * self.unit * self.build

    @property
    def leg_width_ankle(self) -> float:
        return 0.044 * self.unit

    @property
    def arm_width_shoulder(self) -> float:
        return 0.046 * self.unit * self.build * math.sqrt(self.shoulders)

    @property
    def arm_width_wrist(self) -> float:
        return 0.034 * self.unit

    @property
    def strap_width(self) -> int:
        """Line width of bag straps, umbrella shafts and handles."""
        return max(2, int(0.012 * self.unit))

    def legs(self) -> tuple[Leg, Leg]:
        """Both legs, left then right: a stride seen from the side, a small stance otherwise."""
        return (self._leg(-1.0), self._leg(1.0))

    def _leg(self, sign: float) -> Leg:
        unit, side = self.unit, self.side
        hip = (self.centre_x + (0.0 if side else sign * 0.045 * unit * self.build), self.hip_y)
        angle = sign * self.stride
        ankle = (
            hip[0] + math.sin(angle) * (self.ankle_y - self.hip_y) + (0 if side else sign * 0.012 * unit),
            self.ankle_y,
        )
        knee = ((hip[0] + ankle[0]) / 2 + (0.01 * unit if side else 0.0), self.knee_y)
        return Leg(hip, knee, ankle)

    @property
    def arm_signs(self) -> tuple[float, ...]:
        """The arms in view, by side of the body: one seen from the side, both otherwise."""
        return (1.0,) if self.side else (-1.0, 1.0)

    def arm(self, sign: float, rng: random.Random) -> Arm:
        """The arm on side ``sign``; seen from the side it swings forward or back at random."""
        unit, side = self.unit, self.side
        arm_w0 = self.arm_width_shoulder
        shoulder = (
            self.centre_x + (0.0 if side else sign * (self.half_shoulder - arm_w0 * 0.35)),
            self.shoulder_y + arm_w0 * 0.4,
        )
        upper_angle = (self.swing * (1 if rng.random() < 0.5 else -1)) if side else sign * self.swing
        elbow = (shoulder[0] + math.sin(upper_angle) * 0.15 * unit, shoulder[1] + math.cos(upper_angle) * 0.15 * unit)
        fore_angle = upper_angle * 1.3 if side else upper_angle * 0.6
        hand = (elbow[0] + math.sin(fore_angle) * 0.14 * unit, elbow[1] + math.cos(fore_angle) * 0.14 * unit)
        return Arm(shoulder, elbow, hand)


def pose_figure(
    box: tuple[float, float, float], build: float, view: str, rng: random.Random, shoulders: float = 1.0
) -> Figure:
    """Place a person at ``box`` (centre x, head top y, body height) with a random stride and swing."""
    centre_x, top, unit = box
    side = view == "side"
    stride = rng.uniform(0.0, 0.2) if side else rng.uniform(0.0, 0.05)
    swing = rng.uniform(0.0, 0.35) if side else rng.uniform(0.02, 0.12)
    return Figure(
        centre_x=centre_x, top=top, unit=unit, build=build, view=view, stride=stride, swing=swing, shoulders=shoulders
    )
