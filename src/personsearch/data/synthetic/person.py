"""Draw one person, part by part, back to front.

The order of the parts is the depth order (later parts cover earlier ones) and also the order of
the random draws (pose, arm swing, how an item is held), so it must not change: the same inputs
give the same pixels only while both stay as they are.
"""

from __future__ import annotations

import random
from collections.abc import Mapping

from personsearch.data.synthetic.accessories import (
    draw_backpack_behind,
    draw_bag,
    draw_carried_item,
    draw_headwear,
)
from personsearch.data.synthetic.body import (
    draw_arms,
    draw_hair_behind_shoulders,
    draw_head,
    draw_legs,
    draw_seat_or_skirt,
    draw_upper_garment,
)
from personsearch.data.synthetic.canvas import Canvas
from personsearch.data.synthetic.figure import pose_figure
from personsearch.data.synthetic.look import Look


def draw_person(
    canvas: Canvas,
    attrs: Mapping[str, str],
    look: Look,
    view: str,
    rng: random.Random,
    box: tuple[float, float, float],
) -> None:
    """Draw the person facing the camera ("front"), away ("back") or to the right ("side").

    ``box`` is (centre x, head top y, body height) on the canvas.
    """
    upper_type, lower_type = attrs["upper_type"], attrs.get("lower_type", "none")
    pattern = attrs["upper_pattern"]
    fig = pose_figure(box, look.width, view, rng, look.shoulders)
    long_hair = attrs["hair_length"] == "long"

    if long_hair and view != "back":
        draw_hair_behind_shoulders(canvas, fig, look)
    if attrs["bag"] == "backpack" and view != "back":
        draw_backpack_behind(canvas, fig, look)
    draw_legs(canvas, fig, lower_type, look)
    draw_seat_or_skirt(canvas, fig, lower_type, look)
    draw_upper_garment(canvas, fig, upper_type, pattern, look)
    hands = draw_arms(canvas, fig, upper_type, look, rng)
    draw_head(canvas, fig, long_hair, look)
    draw_headwear(canvas, fig, attrs["headwear"], look)
    draw_bag(canvas, fig, attrs["bag"], look, hands)
    draw_carried_item(canvas, fig, attrs["item"], attrs["bag"] != "none", look, rng, hands[-1])
