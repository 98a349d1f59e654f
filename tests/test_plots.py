"""Figure helpers of lib.plots whose job a test can check."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

from lib import plots  # noqa: E402


def test_labels_of_close_points_do_not_overlap():
    fig, ax = plt.subplots(figsize=(3, 3))
    xs, ys = [0.830, 0.842, 0.5, 0.2], [0.670, 0.682, 0.5, 0.2]  # the first two touch
    ax.scatter(xs, ys)
    plots.label_points(ax, xs, ys, ["4", "2", "C3", "6"])
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    boxes = [t.get_window_extent(r) for t in ax.texts]
    assert [t.get_text() for t in ax.texts] == ["6", "C3", "4", "2"]  # left to right
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
    plt.close(fig)
