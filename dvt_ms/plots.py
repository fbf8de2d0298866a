"""PNG figures drawn with Pillow alone: accuracy-vs-budget curves and captioned image grids.

The project avoids a plotting dependency, so this module draws the two figures the demo needs
by hand. Both writers are atomic (``fileio.atomic_write``): a reader never sees a half-written file.

Fonts: DejaVu Sans when the system has it (it has symbols such as ✓ and ✗), otherwise Pillow's
built-in font; symbols that font lacks are replaced by ASCII look-alikes.
"""
import math

from PIL import Image, ImageDraw, ImageFont

from .fileio import atomic_write

__all__ = ["plot_budget_curve", "image_grid", "load_font", "nice_ticks"]

# Matplotlib's "tab10" palette: distinct colours that survive greyscale printing reasonably well.
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
           "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")
# Marker shapes for single points; curves use circles.
POINT_MARKERS = ("square", "triangle", "diamond", "inverted_triangle", "pentagon", "hexagon")

# Budget plots are drawn this many times larger, then scaled down, to antialias them.
_OVERSAMPLE = 2

# Stand-ins for symbols the fallback font cannot draw.
_ASCII_STAND_INS = {"✓": "+", "✔": "+", "✗": "x", "✘": "x", "×": "x", "·": "-", "→": "->"}


# --------------------------------------------------------------------------------------------
# Fonts and text
# --------------------------------------------------------------------------------------------

def load_font(size):
    """A scalable font of ``size`` pixels: DejaVu Sans if installed, else Pillow's default."""
    try:
        return ImageFont.truetype("DejaVuSans.ttf", size)
    except OSError:
        pass
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError):  # Pillow < 10.1, or built without FreeType
        return ImageFont.load_default()


def _has_glyph(font, character):
    # A missing glyph renders as the font's "notdef" box, the same as a private-use code point.
    try:
        return bytes(font.getmask(character)) != bytes(font.getmask("\ue000"))
    except (UnicodeEncodeError, AttributeError):
        return False


def _drawable(text, font):
    """``text`` with characters the font cannot draw replaced by ASCII stand-ins."""
    return "".join(_ASCII_STAND_INS.get(c, c) if ord(c) > 127 and not _has_glyph(font, c) else c
                   for c in text)


def _text_size(draw, text, font):
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    return right - left, bottom - top


# --------------------------------------------------------------------------------------------
# Atomic PNG writing
# --------------------------------------------------------------------------------------------

def _save_png_atomically(image, path):
    atomic_write(str(path), lambda temporary: image.save(temporary, format="PNG"))


# --------------------------------------------------------------------------------------------
# Axes
# --------------------------------------------------------------------------------------------

def nice_ticks(low, high, target_count=6):
    """Round tick values (steps of 1, 2 or 5 times a power of ten) covering [low, high]."""
    if high < low:
        low, high = high, low
    if high == low:
        pad = abs(low) * 0.1 or 1.0
        low, high = low - pad, high + pad
    raw_step = (high - low) / max(target_count - 1, 1)
    magnitude = 10 ** math.floor(math.log10(raw_step))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw_step)
    first = math.floor(low / step + 1e-9) * step
    last = math.ceil(high / step - 1e-9) * step
    count = int(round((last - first) / step)) + 1
    return [first + i * step for i in range(count)], step


def _tick_label(value, step):
    decimals = max(0, -int(math.floor(math.log10(step) + 1e-9)))
    if round(step * 10 ** decimals, 6) % 1:  # e.g. a step of 2.5
        decimals += 1
    return f"{value:.{decimals}f}"


class _Axes:
    """Maps data coordinates to pixels inside the plotting rectangle."""

    def __init__(self, box, x_ticks, y_ticks):
        self.left, self.top, self.right, self.bottom = box
        self.x_low, self.x_high = x_ticks[0], x_ticks[-1]
        self.y_low, self.y_high = y_ticks[0], y_ticks[-1]

    def to_pixel(self, x, y):
        px = self.left + (x - self.x_low) / (self.x_high - self.x_low) * (self.right - self.left)
        py = self.bottom - (y - self.y_low) / (self.y_high - self.y_low) * (self.bottom - self.top)
        return px, py


def _draw_marker(draw, centre, shape, radius, colour, scale=1.0):
    cx, cy = centre
    outline_width = max(1, round(scale))
    if shape == "circle":
        draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=colour,
                     outline="white", width=outline_width)
        return
    sides, phase = {"square": (4, math.pi / 4), "triangle": (3, -math.pi / 2),
                    "diamond": (4, 0.0), "inverted_triangle": (3, math.pi / 2),
                    "pentagon": (5, -math.pi / 2), "hexagon": (6, 0.0)}[shape]
    radius = radius * 1.25  # polygons look smaller than a circle of the same radius
    points = [(cx + radius * math.cos(phase + 2 * math.pi * i / sides),
               cy + radius * math.sin(phase + 2 * math.pi * i / sides)) for i in range(sides)]
    draw.polygon(points, fill=colour, outline="black", width=outline_width)


def _padded_range(values, fraction=0.05):
    low, high = min(values), max(values)
    pad = (high - low) * fraction
    return low - pad, high + pad


def _draw_frame_and_ticks(draw, axes, x_ticks, x_step, y_ticks, y_step, font, scale):
    grid_colour, axis_colour = (228, 228, 228), (60, 60, 60)
    thin, tick_length, gap = max(1, round(scale)), 5 * scale, 8 * scale
    for x in x_ticks:
        px, _ = axes.to_pixel(x, axes.y_low)
        draw.line([(px, axes.top), (px, axes.bottom)], fill=grid_colour, width=thin)
        draw.line([(px, axes.bottom), (px, axes.bottom + tick_length)], fill=axis_colour,
                  width=thin)
        draw.text((px, axes.bottom + gap), _tick_label(x, x_step), fill=axis_colour, font=font,
                  anchor="ma")
    for y in y_ticks:
        _, py = axes.to_pixel(axes.x_low, y)
        draw.line([(axes.left, py), (axes.right, py)], fill=grid_colour, width=thin)
        draw.line([(axes.left - tick_length, py), (axes.left, py)], fill=axis_colour, width=thin)
        draw.text((axes.left - gap, py), _tick_label(y, y_step), fill=axis_colour, font=font,
                  anchor="rm")
    draw.rectangle([axes.left, axes.top, axes.right, axes.bottom], outline=axis_colour,
                   width=thin)


def _draw_vertical_text(canvas, text, centre, font, colour):
    """Paste ``text`` rotated 90 degrees counter-clockwise, centred on ``centre``."""
    width, height = _text_size(ImageDraw.Draw(canvas), text, font)
    strip = Image.new("RGBA", (width + 4, height + 8), (255, 255, 255, 0))
    ImageDraw.Draw(strip).text((2, 2), text, fill=colour, font=font, anchor="lt")
    strip = strip.rotate(90, expand=True)
    canvas.paste(strip, (int(centre[0] - strip.width / 2), int(centre[1] - strip.height / 2)),
                 strip)


def _legend_entries(curves, points):
    """(label, marker shape, colour, is_curve) per legend row; curves first, then points."""
    entries = [(label, "circle", PALETTE[i % len(PALETTE)], True)
               for i, label in enumerate(curves)]
    offset = len(curves)
    entries += [(label, POINT_MARKERS[i % len(POINT_MARKERS)],
                 PALETTE[(offset + i) % len(PALETTE)], False) for i, label in enumerate(points)]
    return entries


def _legend_box(draw, axes, entries, font, occupied, scale):
    """The legend rectangle in the corner of the plot covering the fewest ``occupied`` pixels."""
    line_height = _text_size(draw, "Ag", font)[1] + 8 * scale
    width = 54 * scale + max(_text_size(draw, label, font)[0] for label, *_ in entries)
    height = line_height * len(entries) + 8 * scale
    margin = 10 * scale
    corners = [(axes.right - margin - width, axes.bottom - margin - height),  # lower right
               (axes.left + margin, axes.top + margin),                        # upper left
               (axes.right - margin - width, axes.top + margin),               # upper right
               (axes.left + margin, axes.bottom - margin - height)]            # lower left

    def covered(corner):
        x, y = corner
        return sum(x - margin <= px <= x + width + margin
                   and y - margin <= py <= y + height + margin for px, py in occupied)

    x, y = min(corners, key=covered)  # ties keep the earlier, conventional corner
    return x, y, width, height, line_height


def _draw_legend(draw, axes, entries, font, occupied, scale):
    x, y, width, height, line_height = _legend_box(draw, axes, entries, font, occupied, scale)
    draw.rectangle([x, y, x + width, y + height], fill="white", outline=(150, 150, 150),
                   width=max(1, round(scale)))
    for row, (label, marker, colour, is_curve) in enumerate(entries):
        cy = y + 4 * scale + line_height * (row + 0.5)
        if is_curve:
            draw.line([(x + 8 * scale, cy), (x + 36 * scale, cy)], fill=colour,
                      width=round(3 * scale))
        _draw_marker(draw, (x + 22 * scale, cy), marker, 5 * scale, colour, scale)
        draw.text((x + 44 * scale, cy), label, fill="black", font=font, anchor="lm")


def _along(pixels, samples_per_segment=10):
    """Points spread along a polyline, so the legend also avoids the lines between markers."""
    spread = list(pixels)
    for (x0, y0), (x1, y1) in zip(pixels, pixels[1:]):
        for step in range(1, samples_per_segment):
            t = step / samples_per_segment
            spread.append((x0 + (x1 - x0) * t, y0 + (y1 - y0) * t))
    return spread


def plot_budget_curve(path, curves, points, title, xlabel="GFLOPs per image",
                      ylabel="top-1 accuracy (%)", size=(800, 600)):
    """Draw accuracy-vs-budget ``curves`` and single ``points`` to the PNG ``path``.

    ``curves``: dict label -> (xs, ys), drawn as lines with circle markers in x order.
    ``points``: dict label -> (x, y), each drawn as its own marker shape and labelled beside it
    (e.g. every exit of the cascade used alone). Returns the drawn ``PIL.Image``.
    """
    curves = {label: (list(map(float, xs)), list(map(float, ys)))
              for label, (xs, ys) in curves.items()}
    points = {label: (float(x), float(y)) for label, (x, y) in points.items()}
    for label, (xs, ys) in curves.items():
        if len(xs) != len(ys):
            raise ValueError(f"curve {label!r}: {len(xs)} x values but {len(ys)} y values")
    all_x = [x for xs, _ in curves.values() for x in xs] + [x for x, _ in points.values()]
    all_y = [y for _, ys in curves.values() for y in ys] + [y for _, y in points.values()]
    if not all_x:
        raise ValueError("plot_budget_curve needs at least one curve or point")

    # Drawn at twice the size and scaled down: Pillow's lines and polygons are not antialiased.
    width, height = size[0] * _OVERSAMPLE, size[1] * _OVERSAMPLE
    scale = height / 600  # fonts and margins grow with the figure
    title_font, label_font, tick_font = (load_font(round(s * scale)) for s in (20, 16, 13))
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)

    x_ticks, x_step = nice_ticks(*_padded_range(all_x))
    y_ticks, y_step = nice_ticks(*_padded_range(all_y))
    axes = _Axes((round(90 * scale), round(55 * scale), width - round(30 * scale),
                  height - round(70 * scale)), x_ticks, y_ticks)
    _draw_frame_and_ticks(draw, axes, x_ticks, x_step, y_ticks, y_step, tick_font, scale)

    title = _drawable(title, title_font)
    draw.text((width / 2, round(25 * scale)), title, fill="black", font=title_font, anchor="mm")
    draw.text(((axes.left + axes.right) / 2, height - round(20 * scale)),
              _drawable(xlabel, label_font), fill="black", font=label_font, anchor="mm")
    _draw_vertical_text(canvas, _drawable(ylabel, label_font),
                        (round(22 * scale), (axes.top + axes.bottom) / 2), label_font, "black")

    entries = _legend_entries(curves, points)
    occupied = []  # pixels the legend should not hide
    for (label, (xs, ys)), (_, marker, colour, _) in zip(curves.items(), entries):
        ordered = sorted(zip(xs, ys))
        pixels = [axes.to_pixel(x, y) for x, y in ordered]
        if len(pixels) > 1:
            draw.line(pixels, fill=colour, width=max(2, round(3 * scale)), joint="curve")
        for pixel in pixels:
            _draw_marker(draw, pixel, marker, 4 * scale, colour, scale)
        occupied += _along(pixels)
    for (label, (x, y)), (_, marker, colour, _) in zip(points.items(), entries[len(curves):]):
        pixel = axes.to_pixel(x, y)
        _draw_marker(draw, pixel, marker, 6 * scale, colour, scale)
        # A white halo keeps the label readable where it crosses a curve or grid line.
        draw.text((pixel[0] + 10 * scale, pixel[1] - 10 * scale), _drawable(label, tick_font),
                  fill=colour, font=tick_font, anchor="ls", stroke_width=round(2 * scale),
                  stroke_fill="white")
        occupied.append(pixel)

    entries = [(_drawable(label, tick_font), *rest) for label, *rest in entries]
    _draw_legend(draw, axes, entries, tick_font, occupied, scale)
    canvas = canvas.resize(size, Image.LANCZOS)
    _save_png_atomically(canvas, path)
    return canvas


# --------------------------------------------------------------------------------------------
# Image grid
# --------------------------------------------------------------------------------------------

def _fit(image, cell_width, cell_height):
    """Scale ``image`` to fit the cell; integer upscales stay pixel-sharp (nearest neighbour)."""
    image = image.convert("RGB")
    factor = min(cell_width / image.width, cell_height / image.height)
    new_size = (max(1, round(image.width * factor)), max(1, round(image.height * factor)))
    resample = Image.NEAREST if factor >= 1 and factor == int(factor) else Image.LANCZOS
    return image.resize(new_size, resample)


def _shorten(draw, text, font, max_width):
    """``text`` cut with an ellipsis so it fits ``max_width`` pixels."""
    if _text_size(draw, text, font)[0] <= max_width:
        return text
    while text and _text_size(draw, text + "...", font)[0] > max_width:
        text = text[:-1]
    return text + "..."


def image_grid(path, images, captions, columns, cell_size, caption_colors=None, font_size=None,
               background="white"):
    """Write a grid of ``images`` with a caption under each to the PNG ``path``.

    ``cell_size``: int or (width, height) of the image area of a cell. ``captions`` may hold
    several lines separated by "\\n"; lines too wide for the cell are cut with an ellipsis.
    ``caption_colors``: optional colour per caption (e.g. green for right, red for wrong).
    Returns the drawn ``PIL.Image``.
    """
    images, captions = list(images), list(captions)
    if len(images) != len(captions):
        raise ValueError(f"{len(images)} images but {len(captions)} captions")
    if not images:
        raise ValueError("image_grid needs at least one image")
    if caption_colors is None:
        caption_colors = ["black"] * len(images)
    elif len(caption_colors) != len(images):
        raise ValueError(f"{len(images)} images but {len(caption_colors)} caption colours")
    columns = min(columns, len(images))  # a short list makes one narrow row, not empty cells
    cell_width, cell_height = (cell_size, cell_size) if isinstance(cell_size, int) else cell_size
    font = load_font(font_size or max(10, min(16, cell_width // 9)))

    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    line_height = _text_size(probe, "Ag", font)[1] + 4
    lines_per_caption = max(caption.count("\n") + 1 for caption in captions)
    padding = 6
    caption_height = line_height * lines_per_caption + padding
    rows = -(-len(images) // columns)
    pitch_x, pitch_y = cell_width + padding, cell_height + caption_height + padding
    canvas = Image.new("RGB", (columns * pitch_x + padding, rows * pitch_y + padding), background)
    draw = ImageDraw.Draw(canvas)

    for index, (image, caption, colour) in enumerate(zip(images, captions, caption_colors)):
        x0 = padding + (index % columns) * pitch_x
        y0 = padding + (index // columns) * pitch_y
        fitted = _fit(image, cell_width, cell_height)
        canvas.paste(fitted, (x0 + (cell_width - fitted.width) // 2,
                              y0 + (cell_height - fitted.height) // 2))
        for line_index, line in enumerate(_drawable(caption, font).split("\n")):
            line = _shorten(draw, line, font, cell_width)
            draw.text((x0 + cell_width / 2, y0 + cell_height + 3 + line_height * line_index),
                      line, fill=colour, font=font, anchor="ma")
    _save_png_atomically(canvas, path)
    return canvas
