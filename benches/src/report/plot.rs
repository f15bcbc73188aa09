//! Horizontal bar charts of one workload, drawn into an RGB buffer and
//! encoded as PNG.
//!
//! One panel per group (case and metric), stacked top to bottom; one bar
//! per system, its name on the left and its value at the end of the bar.
//! Every panel's scale starts at zero. The label column and the room kept
//! for values are the same in all panels of an image, so that the panels
//! line up.

use ab_glyph::{point, Font as _, FontVec, GlyphId, PxScale, ScaleFont as _};
use anyhow::{bail, Context};

use super::{format_value, group_thousands, Group};
use crate::suite::results::Role;

/// Where DejaVu Sans lives on Debian and Ubuntu (`fonts-dejavu-core`),
/// Fedora and Arch, in that order.
const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu-sans-fonts/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
];

/// The font every label is drawn with.
pub(super) struct Font(FontVec);

impl Font {
    /// DejaVu Sans from the first of [`FONT_PATHS`] that exists.
    pub(super) fn load() -> anyhow::Result<Font> {
        Font::load_first(FONT_PATHS)
    }

    fn load_first(paths: &[&str]) -> anyhow::Result<Font> {
        let Some(path) = paths.iter().find(|p| std::path::Path::new(p).is_file()) else {
            bail!(
                "no DejaVu Sans font for the report's plots (looked for {}); install the \
                 Debian package fonts-dejavu-core (xtask/scripts/install-bench-deps.sh does)",
                paths.join(", ")
            );
        };
        let bytes = std::fs::read(path).with_context(|| format!("read font {path}"))?;
        let font = FontVec::try_from_vec(bytes)
            .map_err(|e| anyhow::anyhow!("{path} is not a usable font: {e}"))?;
        Ok(Font(font))
    }
}

type Rgb = [u8; 3];

const WHITE: Rgb = [255, 255, 255];
const TEXT: Rgb = [33, 33, 33];
const MUTED: Rgb = [110, 110, 110];
const GRID: Rgb = [228, 228, 228];
const AXIS: Rgb = [140, 140, 140];
const TIDEGATE: Rgb = [31, 119, 180];
const PEER: Rgb = [242, 142, 43];
const LIMIT: Rgb = [170, 170, 170];

fn role_colour(role: Role) -> Rgb {
    match role {
        Role::Tidegate => TIDEGATE,
        Role::Peer => PEER,
        Role::Limit => LIMIT,
    }
}

/// Image width in pixels.
const WIDTH: u32 = 1200;
const MARGIN: f32 = 24.0;
/// Text sizes (ab_glyph's pixel scale: ascent to descent).
const TITLE_SIZE: f32 = 28.0;
const PANEL_TITLE_SIZE: f32 = 20.0;
const LABEL_SIZE: f32 = 17.0;
const TICK_SIZE: f32 = 14.0;
/// Height of the image title and legend.
const HEADER_HEIGHT: f32 = 96.0;
/// From a panel's top to its first bar row.
const PANEL_TITLE_HEIGHT: f32 = 36.0;
const ROW_HEIGHT: f32 = 32.0;
const BAR_HEIGHT: f32 = 22.0;
/// Below the last row: axis, tick labels and the gap to the next panel.
const PANEL_FOOTER_HEIGHT: f32 = 56.0;
/// Gaps between a label and its bar, and between a bar and its value.
const GAP: f32 = 10.0;

/// The PNG of one workload's groups under `title`.
pub(super) fn render(font: &Font, title: &str, groups: &[Group<'_>]) -> anyhow::Result<Vec<u8>> {
    let rows: usize = groups.iter().map(|g| g.rows.len()).sum();
    let height = HEADER_HEIGHT
        + groups.len() as f32 * (PANEL_TITLE_HEIGHT + PANEL_FOOTER_HEIGHT)
        + rows as f32 * ROW_HEIGHT;
    let mut canvas = Canvas::new(WIDTH, height.ceil() as u32);
    let width = WIDTH as f32;

    let title = font.fit(TITLE_SIZE, title, width - 2.0 * MARGIN);
    canvas.text(font, TITLE_SIZE, MARGIN, 40.0, &title, TEXT, Align::Left);
    let mut x = MARGIN;
    for (role, label) in [
        (Role::Tidegate, "tidegate"),
        (Role::Peer, "other systems"),
        (Role::Limit, "physical limit"),
    ] {
        if !groups.iter().any(|g| g.rows.iter().any(|m| m.role == role)) {
            continue;
        }
        canvas.rect(x, 60.0, x + 16.0, 76.0, role_colour(role));
        x += 16.0 + 6.0;
        canvas.text(font, LABEL_SIZE, x, 74.0, label, TEXT, Align::Left);
        x += font.width(LABEL_SIZE, label) + 24.0;
    }

    // One label column and one value column for all panels.
    let label_width = groups
        .iter()
        .flat_map(|g| &g.rows)
        .map(|m| font.width(LABEL_SIZE, &m.system))
        .fold(80.0f32, f32::max)
        .min(width * 0.3);
    let value_width = groups
        .iter()
        .flat_map(|g| g.rows.iter().map(|m| value_text(m.value, g.unit)))
        .map(|t| font.width(LABEL_SIZE, &t))
        .fold(60.0f32, f32::max)
        .min(width * 0.25);
    let bar_left = MARGIN + label_width + GAP;
    let bar_right = width - MARGIN - value_width - GAP;

    let mut top = HEADER_HEIGHT;
    for g in groups {
        panel(&mut canvas, font, g, top, bar_left, bar_right, label_width);
        top += PANEL_TITLE_HEIGHT + g.rows.len() as f32 * ROW_HEIGHT + PANEL_FOOTER_HEIGHT;
    }
    canvas.png()
}

fn value_text(value: f64, unit: &str) -> String {
    if value.is_finite() {
        format_value(value, unit)
    } else {
        "no value".to_owned()
    }
}

fn panel(
    canvas: &mut Canvas,
    font: &Font,
    g: &Group<'_>,
    top: f32,
    bar_left: f32,
    bar_right: f32,
    label_width: f32,
) {
    // A title too long for the image loses the end of its case, never
    // the metric or which direction is better.
    let suffix = g.title_suffix();
    let room = WIDTH as f32 - 2.0 * MARGIN - font.width(PANEL_TITLE_SIZE, &suffix);
    let title = font.fit(PANEL_TITLE_SIZE, g.case, room) + &suffix;
    canvas.text(
        font,
        PANEL_TITLE_SIZE,
        MARGIN,
        top + 22.0,
        &title,
        TEXT,
        Align::Left,
    );

    let max = g
        .rows
        .iter()
        .map(|m| m.value)
        .filter(|v| v.is_finite())
        .fold(0.0f64, f64::max);
    let (step, axis_max) = axis(max);
    let x_of = |v: f64| bar_left + ((v / axis_max) as f32).clamp(0.0, 1.0) * (bar_right - bar_left);

    let rows_top = top + PANEL_TITLE_HEIGHT;
    let rows_bottom = rows_top + g.rows.len() as f32 * ROW_HEIGHT;
    let ticks = (axis_max / step).round() as u32;
    for i in 0..=ticks {
        let v = step * f64::from(i);
        let x = x_of(v).round();
        canvas.rect(x, rows_top, x + 1.0, rows_bottom, GRID);
        canvas.text(
            font,
            TICK_SIZE,
            x,
            rows_bottom + 22.0,
            &tick_text(v, step),
            MUTED,
            Align::Center,
        );
    }
    canvas.rect(
        bar_left,
        rows_bottom,
        bar_right + 1.0,
        rows_bottom + 1.0,
        AXIS,
    );
    canvas.rect(bar_left, rows_top, bar_left + 1.0, rows_bottom, AXIS);

    for (i, m) in g.rows.iter().enumerate() {
        let middle = rows_top + (i as f32 + 0.5) * ROW_HEIGHT;
        let baseline = middle + LABEL_SIZE * 0.3;
        let label = font.fit(LABEL_SIZE, &m.system, label_width);
        canvas.text(
            font,
            LABEL_SIZE,
            bar_left - GAP,
            baseline,
            &label,
            TEXT,
            Align::Right,
        );
        if m.value.is_finite() {
            let end = x_of(m.value.max(0.0));
            canvas.rect(
                bar_left + 1.0,
                middle - BAR_HEIGHT / 2.0,
                end,
                middle + BAR_HEIGHT / 2.0,
                role_colour(m.role),
            );
            let text = value_text(m.value, g.unit);
            canvas.text(
                font,
                LABEL_SIZE,
                end + GAP,
                baseline,
                &text,
                TEXT,
                Align::Left,
            );
        } else {
            canvas.text(
                font,
                LABEL_SIZE,
                bar_left + GAP,
                baseline,
                "no value",
                MUTED,
                Align::Left,
            );
        }
    }
}

/// A tick value with as many decimals as the step needs: `0`, `0.5`,
/// `1,500`, `2` (where [`format_number`](super::format_number) would write `2.00`).
fn tick_text(v: f64, step: f64) -> String {
    if step >= 1.0 || v == 0.0 {
        return group_thousands(v.round());
    }
    let decimals = (-step.log10().floor()).max(0.0) as usize;
    format!("{v:.decimals$}")
}

/// A tick step of 1, 2 or 5 times a power of ten giving about five ticks,
/// and the axis end: `max` rounded up to a whole number of steps.
fn axis(max: f64) -> (f64, f64) {
    if !(max.is_finite() && max > 0.0) {
        return (0.2, 1.0);
    }
    let rough = max / 5.0;
    let power = 10f64.powf(rough.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * power)
        .find(|s| *s >= rough)
        .unwrap_or(10.0 * power);
    let end = (max / step - 1e-9).ceil().max(1.0) * step;
    (step, end)
}

#[derive(Clone, Copy)]
enum Align {
    Left,
    Center,
    Right,
}

impl Font {
    /// The advance width of `text` at `size`, kerning included.
    fn width(&self, size: f32, text: &str) -> f32 {
        let scaled = self.0.as_scaled(PxScale::from(size));
        let mut width = 0.0;
        let mut prev: Option<GlyphId> = None;
        for c in text.chars() {
            let id = scaled.glyph_id(c);
            if let Some(p) = prev {
                width += scaled.kern(p, id);
            }
            width += scaled.h_advance(id);
            prev = Some(id);
        }
        width
    }

    /// `text`, shortened with `…` until it fits in `max_width`.
    fn fit(&self, size: f32, text: &str, max_width: f32) -> String {
        if self.width(size, text) <= max_width {
            return text.to_owned();
        }
        let mut chars: Vec<char> = text.chars().collect();
        while !chars.is_empty() {
            chars.pop();
            let candidate: String = chars.iter().collect::<String>() + "…";
            if self.width(size, &candidate) <= max_width {
                return candidate;
            }
        }
        "…".to_owned()
    }
}

/// An RGB image, row by row.
struct Canvas {
    width: u32,
    height: u32,
    pixels: Vec<u8>,
}

impl Canvas {
    fn new(width: u32, height: u32) -> Canvas {
        let pixels = WHITE.repeat(width as usize * height as usize);
        Canvas {
            width,
            height,
            pixels,
        }
    }

    /// Fills the pixels whose centres lie in `[x0, x1) × [y0, y1)`.
    fn rect(&mut self, x0: f32, y0: f32, x1: f32, y1: f32, colour: Rgb) {
        let clamp_x = |v: f32| (v.round().max(0.0) as u32).min(self.width);
        let clamp_y = |v: f32| (v.round().max(0.0) as u32).min(self.height);
        let (x0, x1, y0, y1) = (clamp_x(x0), clamp_x(x1), clamp_y(y0), clamp_y(y1));
        for y in y0..y1 {
            let row = (y * self.width) as usize * 3;
            for x in x0..x1 {
                let i = row + x as usize * 3;
                self.pixels[i..i + 3].copy_from_slice(&colour);
            }
        }
    }

    /// Mixes `colour` into one pixel with weight `coverage` (0 to 1).
    fn blend(&mut self, x: i32, y: i32, colour: Rgb, coverage: f32) {
        let (Ok(x), Ok(y)) = (u32::try_from(x), u32::try_from(y)) else {
            return;
        };
        if x >= self.width || y >= self.height {
            return;
        }
        let a = coverage.clamp(0.0, 1.0);
        let i = (y * self.width + x) as usize * 3;
        for (dst, src) in self.pixels[i..i + 3].iter_mut().zip(colour) {
            *dst = (f32::from(src) * a + f32::from(*dst) * (1.0 - a)).round() as u8;
        }
    }

    /// Draws `text` on the baseline `baseline`, starting, centred or ending
    /// at `x` as `align` says.
    #[allow(clippy::too_many_arguments)]
    fn text(
        &mut self,
        font: &Font,
        size: f32,
        x: f32,
        baseline: f32,
        text: &str,
        colour: Rgb,
        align: Align,
    ) {
        let scale = PxScale::from(size);
        let scaled = font.0.as_scaled(scale);
        let mut caret = match align {
            Align::Left => x,
            Align::Center => x - font.width(size, text) / 2.0,
            Align::Right => x - font.width(size, text),
        };
        let mut prev: Option<GlyphId> = None;
        for c in text.chars() {
            let id = scaled.glyph_id(c);
            if let Some(p) = prev {
                caret += scaled.kern(p, id);
            }
            let glyph = id.with_scale_and_position(scale, point(caret, baseline));
            caret += scaled.h_advance(id);
            prev = Some(id);
            if let Some(outlined) = font.0.outline_glyph(glyph) {
                let bounds = outlined.px_bounds();
                let (left, top) = (bounds.min.x as i32, bounds.min.y as i32);
                outlined.draw(|gx, gy, coverage| {
                    self.blend(left + gx as i32, top + gy as i32, colour, coverage);
                });
            }
        }
    }

    fn png(&self) -> anyhow::Result<Vec<u8>> {
        let mut out = Vec::new();
        let mut encoder = png::Encoder::new(&mut out, self.width, self.height);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header().context("PNG header")?;
        writer
            .write_image_data(&self.pixels)
            .context("PNG image data")?;
        writer.finish().context("PNG end")?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::{axis, tick_text, Font};

    #[test]
    fn missing_font_names_the_package() {
        let err = Font::load_first(&["/nonexistent/DejaVuSans.ttf"])
            .err()
            .expect("no font there");
        let text = format!("{err:#}");
        assert!(text.contains("fonts-dejavu-core"), "{text}");
        assert!(text.contains("/nonexistent/DejaVuSans.ttf"), "{text}");
    }

    #[test]
    fn axis_steps() {
        assert_eq!(axis(0.0), (0.2, 1.0));
        assert_eq!(axis(f64::NAN), (0.2, 1.0));
        assert_eq!(axis(400.0), (100.0, 400.0));
        assert_eq!(axis(1234.0), (500.0, 1500.0));
        let (step, end) = axis(0.42);
        assert!((step - 0.1).abs() < 1e-12 && (end - 0.5).abs() < 1e-12);
    }

    #[test]
    fn tick_labels() {
        assert_eq!(tick_text(0.0, 2.0), "0");
        assert_eq!(tick_text(0.0, 0.2), "0");
        assert_eq!(tick_text(4.0, 2.0), "4");
        assert_eq!(tick_text(1500.0, 500.0), "1,500");
        assert_eq!(tick_text(0.30000000000000004, 0.1), "0.3");
        assert_eq!(tick_text(0.05, 0.025), "0.05");
    }
}
