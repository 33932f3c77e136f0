//! The report's figures, drawn with plotters as PNG and SVG. Bar charts
//! are 1150 px wide with 26–28 px text, so that scaled to a paper's
//! column width (8.5 cm) their text stays near 5.5–6 pt; the
//! quality-speed planes (1500 px) are meant for the full text width.

use std::path::{Path, PathBuf};

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::table::{MethodRow, POSITIONS};

const CAPTION: u32 = 32;
const LABEL: u32 = 28;
const NOTE: u32 = 26;

/// A figure that draws onto any backend.
pub trait Figure {
    fn size(&self) -> (u32, u32);
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), String>
    where
        DB::ErrorType: 'static;
}

/// Draws `fig` into `<out>/<stem>.png` and `.svg`.
pub fn render(
    out: &Path,
    stem: &str,
    fig: &impl Figure,
) -> Result<Vec<PathBuf>, (PathBuf, String)> {
    register_fonts();
    let png = out.join(format!("{stem}.png"));
    let svg = out.join(format!("{stem}.svg"));
    {
        let root = BitMapBackend::new(&png, fig.size()).into_drawing_area();
        fig.draw(&root)
            .and_then(|_| root.present().map_err(pe))
            .map_err(|e| (png.clone(), e))?;
    }
    {
        let root = SVGBackend::new(&svg, fig.size()).into_drawing_area();
        fig.draw(&root)
            .and_then(|_| root.present().map_err(pe))
            .map_err(|e| (svg.clone(), e))?;
    }
    Ok(vec![png, svg])
}

/// An axis value with no more digits than it needs.
fn tick(x: &f64) -> String {
    let a = x.abs();
    if a == 0.0 || a >= 10.0 {
        format!("{x:.0}")
    } else if a >= 1.0 {
        format!("{x:.1}").trim_end_matches(".0").to_string()
    } else {
        let s = format!("{x:.2}");
        s.trim_end_matches('0').to_string()
    }
}

fn pe(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// plotters draws text with ab_glyph, which needs the font bytes; DejaVu
/// Sans ships in assets/ so charts render the same everywhere.
fn register_fonts() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let bytes: &'static [u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, bytes);
    });
}

/// Tableau's ten colours: distinct for readers with common colour-vision
/// deficiencies, and in greyscale print.
const COLORS: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

fn color(i: usize) -> RGBColor {
    COLORS[i % COLORS.len()]
}

/// Pixels a label column needs for `labels` at the label size.
fn label_width(labels: &[String]) -> u32 {
    let chars = labels.iter().map(|l| l.chars().count()).max().unwrap_or(4) as u32;
    (chars * LABEL * 6 / 10 + 24).clamp(80, 420)
}

/// One bar of a horizontal bar chart: a value with an optional interval.
pub struct Bar {
    pub label: String,
    pub value: f64,
    pub interval: Option<(f64, f64)>,
    pub text: String,
}

/// Horizontal bars, one per method, with whiskers; an optional vertical
/// reference line (1× for speedups).
pub struct HBars {
    pub title: String,
    pub x_desc: String,
    pub bars: Vec<Bar>,
    pub reference: Option<f64>,
}

impl HBars {
    /// Median tokens/s with the interquartile range.
    pub fn tokens_per_s(title: &str, rows: &[(String, &MethodRow)]) -> Self {
        Self {
            title: title.into(),
            x_desc: "tokens/s (median over samples; whiskers: interquartile range)".into(),
            bars: rows
                .iter()
                .map(|(l, r)| Bar {
                    label: l.clone(),
                    value: r.tokens_per_s_median,
                    interval: Some((r.tokens_per_s_q25, r.tokens_per_s_q75)),
                    text: format!("{:.0}", r.tokens_per_s_median),
                })
                .collect(),
            reference: None,
        }
    }

    /// Geometric-mean paired speedup over `ar` with its bootstrap 95% interval.
    pub fn speedup(title: &str, rows: &[(String, &MethodRow)]) -> Option<Self> {
        let bars: Vec<Bar> = rows
            .iter()
            .filter_map(|(l, r)| {
                Some(Bar {
                    label: l.clone(),
                    value: r.speedup_vs_ar?,
                    interval: r.speedup_ci,
                    text: format!("{:.2}×", r.speedup_vs_ar?),
                })
            })
            .collect();
        (bars.len() > 1).then(|| Self {
            title: title.into(),
            x_desc: "speedup over ar (tokens/s ratio, paired by prompt; whiskers: 95% CI)".into(),
            bars,
            reference: Some(1.0),
        })
    }
}

/// The end of a bar chart's value axis: `top` plus room on the right for
/// notes of `note_chars` characters, given the plot's pixel width.
fn with_note_room(top: f64, plot_px: u32, note_chars: usize) -> f64 {
    if top.is_nan() || top <= 0.0 {
        return 1.0;
    }
    let plot = plot_px as f64;
    let note = note_chars as f64 * NOTE as f64 * 0.52 + 24.0;
    top * plot / (plot - note).max(plot * 0.4)
}

const BAR_WIDTH: u32 = 1150;

type BarChart<'a, DB> = ChartContext<
    'a,
    DB,
    Cartesian2d<
        plotters::coord::types::RangedCoordf64,
        plotters::coord::ranged1d::SegmentedCoord<plotters::coord::types::RangedCoordi32>,
    >,
>;

/// Horizontal bars' frame: one row per label, the first on top, values
/// from 0 to `max_x`.
fn bar_chart<'a, DB: DrawingBackend>(
    area: &'a DrawingArea<DB, Shift>,
    title: &str,
    x_desc: &str,
    labels: &[String],
    max_x: f64,
) -> Result<BarChart<'a, DB>, String>
where
    DB::ErrorType: 'static,
{
    let n = labels.len().max(1);
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", CAPTION))
        .margin(16)
        .x_label_area_size(70)
        .y_label_area_size(label_width(labels))
        .build_cartesian_2d(0f64..max_x, (0..n as i32 - 1).into_segmented())
        .map_err(pe)?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .x_desc(x_desc)
        .x_labels(6)
        .x_label_formatter(&tick)
        .y_labels(n)
        .y_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => {
                labels.get(n - 1 - *i as usize).cloned().unwrap_or_default()
            }
            _ => String::new(),
        })
        .label_style(("sans-serif", LABEL))
        .axis_desc_style(("sans-serif", NOTE))
        .draw()
        .map_err(pe)?;
    Ok(chart)
}

fn bar_height(n: usize) -> u32 {
    150 + 52 * n as u32
}

impl Figure for HBars {
    fn size(&self) -> (u32, u32) {
        (BAR_WIDTH, bar_height(self.bars.len()))
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), String>
    where
        DB::ErrorType: 'static,
    {
        root.fill(&WHITE).map_err(pe)?;
        let n = self.bars.len().max(1);
        let top = self
            .bars
            .iter()
            .map(|b| b.interval.map_or(b.value, |(_, hi)| hi.max(b.value)))
            .chain(self.reference)
            .filter(|x| x.is_finite())
            .fold(0.0f64, f64::max);
        let labels: Vec<String> = self.bars.iter().map(|b| b.label.clone()).collect();
        let note = self
            .bars
            .iter()
            .map(|b| b.text.chars().count())
            .max()
            .unwrap_or(0);
        let max_x = with_note_room(top, BAR_WIDTH - label_width(&labels) - 40, note);
        let mut chart = bar_chart(root, &self.title, &self.x_desc, &labels, max_x)?;
        let fill = color(0);
        let row = |i: usize| (n - 1 - i) as i32;
        chart
            .draw_series(self.bars.iter().enumerate().map(|(i, b)| {
                let i = row(i);
                let mut bar = Rectangle::new(
                    [
                        (0.0, SegmentValue::Exact(i)),
                        (b.value.max(0.0), SegmentValue::Exact(i + 1)),
                    ],
                    fill.mix(0.75).filled(),
                );
                bar.set_margin(9, 9, 0, 0);
                bar
            }))
            .map_err(pe)?;
        chart
            .draw_series(self.bars.iter().enumerate().filter_map(|(i, b)| {
                let (lo, hi) = b.interval?;
                Some(PathElement::new(
                    vec![
                        (lo, SegmentValue::CenterOf(row(i))),
                        (hi, SegmentValue::CenterOf(row(i))),
                    ],
                    BLACK.stroke_width(3),
                ))
            }))
            .map_err(pe)?;
        if let Some(x) = self.reference {
            chart
                .draw_series(std::iter::once(PathElement::new(
                    vec![
                        (x, SegmentValue::Exact(0)),
                        (x, SegmentValue::Exact(n as i32)),
                    ],
                    RED.stroke_width(2),
                )))
                .map_err(pe)?;
        }
        chart
            .draw_series(self.bars.iter().enumerate().map(|(i, b)| {
                let right = b.interval.map_or(b.value, |(_, hi)| hi.max(b.value));
                Text::new(
                    b.text.clone(),
                    (right + max_x * 0.012, SegmentValue::CenterOf(row(i))),
                    ("sans-serif", NOTE)
                        .into_font()
                        .into_text_style(root)
                        .pos(Pos::new(HPos::Left, VPos::Center)),
                )
            }))
            .map_err(pe)?;
        Ok(())
    }
}

/// Horizontal bars cut into parts (stacked), with a legend of the parts.
pub struct Stacked {
    pub title: String,
    pub x_desc: String,
    pub parts: Vec<String>,
    /// Per bar: its label, the parts' lengths, and a note at its end.
    pub bars: Vec<(String, Vec<f64>, String)>,
    /// Colours per part (sequential for ordered parts).
    pub colors: Vec<RGBColor>,
}

impl Stacked {
    /// Per method, the mean decode step split into drafting and the rest
    /// (verification: the target forward and acceptance).
    pub fn step_time(title: &str, rows: &[(String, &MethodRow)]) -> Option<Self> {
        let bars: Vec<(String, Vec<f64>, String)> = rows
            .iter()
            .filter_map(|(l, r)| {
                let d = r.steps.draft_ms_per_step()?;
                let v = r.steps.verify_ms_per_step()?;
                let tpf = r.mean_accepted_tokens.unwrap_or(f64::NAN);
                Some((
                    l.clone(),
                    vec![d, v],
                    format!("{:.2} ms, τ {tpf:.2}", d + v),
                ))
            })
            .collect();
        (!bars.is_empty()).then(|| Self {
            title: title.into(),
            x_desc: "mean wall time per decode step (ms)".into(),
            parts: vec!["draft".into(), "the rest".into()],
            bars,
            colors: vec![color(1), color(0)],
        })
    }

    /// Per method, the decode steps by tokens emitted per target forward:
    /// the distribution behind τ.
    pub fn tau_distribution(title: &str, rows: &[(String, &MethodRow)]) -> Option<Self> {
        // Buckets 0, 1, …, 7 and 8 or more.
        const TOP: usize = 8;
        let bars: Vec<(String, Vec<f64>, String)> = rows
            .iter()
            .filter_map(|(l, r)| {
                let h = &r.steps.tokens_per_forward;
                let total: u64 = h.iter().sum();
                if total == 0 {
                    return None;
                }
                let mut parts = vec![0.0; TOP + 1];
                for (n, &c) in h.iter().enumerate() {
                    parts[n.min(TOP)] += 100.0 * c as f64 / total as f64;
                }
                let mean = h
                    .iter()
                    .enumerate()
                    .map(|(n, &c)| n as f64 * c as f64)
                    .sum::<f64>()
                    / total as f64;
                Some((l.clone(), parts, format!("mean {mean:.2}")))
            })
            .collect();
        let mut parts: Vec<String> = (0..TOP).map(|n| n.to_string()).collect();
        parts.push(format!("{TOP}+"));
        // Light (few tokens) to dark (many): a sequential blue scale.
        // 0 (a step that added nothing) in grey.
        let colors = (0..=TOP)
            .map(|k| {
                if k == 0 {
                    return RGBColor(200, 200, 200);
                }
                let t = k as f64 / TOP as f64;
                RGBColor(
                    (222.0 - 214.0 * t) as u8,
                    (235.0 - 187.0 * t) as u8,
                    (247.0 - 140.0 * t) as u8,
                )
            })
            .collect();
        (!bars.is_empty()).then(|| Self {
            title: title.into(),
            x_desc: "share of decode steps (%) by tokens emitted per target forward".into(),
            parts,
            bars,
            colors,
        })
    }
}

impl Figure for Stacked {
    fn size(&self) -> (u32, u32) {
        (BAR_WIDTH, bar_height(self.bars.len()))
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), String>
    where
        DB::ErrorType: 'static,
    {
        root.fill(&WHITE).map_err(pe)?;
        let n = self.bars.len().max(1);
        let entries: Vec<Entry> = self
            .parts
            .iter()
            .enumerate()
            .map(|(j, p)| (p.clone(), self.colors[j % self.colors.len()], Shape::Square))
            .collect();
        let legend_w = legend_width(&entries);
        let (plot_area, legend_area) = root.split_horizontally(BAR_WIDTH - legend_w);
        let max_total = self
            .bars
            .iter()
            .map(|(_, p, _)| p.iter().sum::<f64>())
            .fold(0.0f64, f64::max);
        let labels: Vec<String> = self.bars.iter().map(|b| b.0.clone()).collect();
        let note = self
            .bars
            .iter()
            .map(|b| b.2.chars().count())
            .max()
            .unwrap_or(0);
        let max_x = with_note_room(
            max_total,
            BAR_WIDTH - legend_w - label_width(&labels) - 40,
            note,
        );
        let mut chart = bar_chart(&plot_area, &self.title, &self.x_desc, &labels, max_x)?;
        for j in 0..self.parts.len() {
            let c = self.colors[j % self.colors.len()];
            chart
                .draw_series(self.bars.iter().enumerate().map(|(i, (_, p, _))| {
                    let x0: f64 = p[..j].iter().sum();
                    let i = (n - 1 - i) as i32;
                    let mut r = Rectangle::new(
                        [
                            (x0, SegmentValue::Exact(i)),
                            (x0 + p[j], SegmentValue::Exact(i + 1)),
                        ],
                        c.filled(),
                    );
                    r.set_margin(9, 9, 0, 0);
                    r
                }))
                .map_err(pe)?;
        }
        chart
            .draw_series(self.bars.iter().enumerate().map(|(i, (_, p, note))| {
                Text::new(
                    note.clone(),
                    (
                        p.iter().sum::<f64>() + max_x * 0.012,
                        SegmentValue::CenterOf((n - 1 - i) as i32),
                    ),
                    ("sans-serif", NOTE)
                        .into_font()
                        .into_text_style(root)
                        .pos(Pos::new(HPos::Left, VPos::Center)),
                )
            }))
            .map_err(pe)?;
        draw_legend(&legend_area, &entries, false, root)
    }
}

/// Acceptance rate by draft position, one line per drafting method.
pub struct Acceptance {
    pub title: String,
    pub lines: Vec<(String, Vec<Option<f64>>)>,
}

impl Acceptance {
    pub fn new(title: &str, rows: &[(String, &MethodRow)]) -> Option<Self> {
        let lines: Vec<(String, Vec<Option<f64>>)> = rows
            .iter()
            .filter(|(_, r)| r.steps.drafts())
            .map(|(l, r)| {
                let mut a = r.steps.acceptance_by_position();
                a.truncate(POSITIONS);
                (l.clone(), a)
            })
            .collect();
        (!lines.is_empty()).then(|| Self {
            title: title.into(),
            lines,
        })
    }
}

impl Figure for Acceptance {
    fn size(&self) -> (u32, u32) {
        (1300, 720)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), String>
    where
        DB::ErrorType: 'static,
    {
        root.fill(&WHITE).map_err(pe)?;
        let entries: Vec<Entry> = self
            .lines
            .iter()
            .enumerate()
            .map(|(k, (l, _))| entry(l.clone(), k))
            .collect();
        let (plot_area, legend_area) =
            root.split_horizontally(self.size().0 - legend_width(&entries));
        let width = self
            .lines
            .iter()
            .map(|(_, a)| a.len())
            .max()
            .unwrap_or(1)
            .max(2);
        let mut chart = ChartBuilder::on(&plot_area)
            .caption(&self.title, ("sans-serif", CAPTION))
            .margin(20)
            .x_label_area_size(70)
            .y_label_area_size(90)
            .build_cartesian_2d(0.7f64..width as f64 + 0.3, 0f64..105.0)
            .map_err(pe)?;
        chart
            .configure_mesh()
            .x_labels(width)
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_label_formatter(&|y| format!("{y:.0}%"))
            .x_desc("draft position")
            .y_desc("accepted, given the earlier ones were")
            .label_style(("sans-serif", LABEL))
            .axis_desc_style(("sans-serif", NOTE))
            .draw()
            .map_err(pe)?;
        for (k, (_, acc)) in self.lines.iter().enumerate() {
            let c = color(k);
            let pts: Vec<(f64, f64)> = acc
                .iter()
                .enumerate()
                .filter_map(|(i, a)| Some(((i + 1) as f64, 100.0 * (*a)?)))
                .collect();
            chart
                .draw_series(LineSeries::new(pts.clone(), c.stroke_width(3)))
                .map_err(pe)?;
            for &p in &pts {
                root.draw(&pixel_marker(shape(k), chart.backend_coord(&p), 7, c))
                    .map_err(pe)?;
            }
        }
        draw_legend(&legend_area, &entries, true, root)
    }
}

/// A legend entry: label, colour, marker shape.
type Entry = (String, RGBColor, Shape);

/// The entry of series `k` (colour and shape by index).
fn entry(label: String, k: usize) -> Entry {
    (label, color(k), shape(k))
}

/// The width of a legend panel for `entries`.
fn legend_width(entries: &[Entry]) -> u32 {
    let chars = entries
        .iter()
        .map(|e| e.0.chars().count())
        .max()
        .unwrap_or(8) as u32;
    (chars * NOTE * 6 / 10 + 80).clamp(140, 600)
}

/// A legend beside a plot: per entry its marker (and a line through it
/// for line charts) and its label; `k` picks colour and shape.
fn draw_legend<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    entries: &[Entry],
    line: bool,
    root: &DrawingArea<DB, Shift>,
) -> Result<(), String>
where
    DB::ErrorType: 'static,
{
    let style = ("sans-serif", NOTE)
        .into_font()
        .into_text_style(root)
        .pos(Pos::new(HPos::Left, VPos::Center));
    let row_h = (NOTE as i32 * 3) / 2;
    for (i, (label, c, sh)) in entries.iter().enumerate() {
        let y = 90 + i as i32 * row_h;
        if line {
            area.draw(&PathElement::new(vec![(4, y), (36, y)], c.stroke_width(3)))
                .map_err(pe)?;
        }
        area.draw(&pixel_marker(*sh, (20, y), 9, *c)).map_err(pe)?;
        area.draw(&Text::new(label.clone(), (46, y), style.clone()))
            .map_err(pe)?;
    }
    Ok(())
}

/// Marker shapes: the series' index picks the colour, and past ten
/// series also the shape, so that every series stays apart.
#[derive(Clone, Copy)]
enum Shape {
    Circle,
    Triangle,
    Square,
    Cross,
}

fn shape(k: usize) -> Shape {
    [Shape::Circle, Shape::Triangle, Shape::Square, Shape::Cross][(k / COLORS.len()) % 4]
}

/// A marker at a pixel position (markers are drawn in pixels so that
/// their shape can vary within one series).
fn pixel_marker<'a, DB: DrawingBackend + 'a>(
    sh: Shape,
    at: (i32, i32),
    size: i32,
    c: RGBColor,
) -> DynElement<'a, DB, (i32, i32)> {
    let (x, y) = at;
    match sh {
        Shape::Circle => Circle::new(at, size, c.filled()).into_dyn(),
        Shape::Triangle => TriangleMarker::new(at, size + 2, c.filled()).into_dyn(),
        Shape::Square => {
            Rectangle::new([(x - size, y - size), (x + size, y + size)], c.filled()).into_dyn()
        }
        Shape::Cross => Cross::new(at, size, c.stroke_width(3)).into_dyn(),
    }
}

/// The configurations on the Pareto front of (speed, score): none other
/// is at least as fast and as good, and better in one. Sorted by speed.
pub fn pareto_front(points: &[(f64, f64)]) -> Vec<usize> {
    let mut front: Vec<usize> = (0..points.len())
        .filter(|&i| {
            let (x, y) = points[i];
            x.is_finite()
                && y.is_finite()
                && !points
                    .iter()
                    .any(|&(a, b)| a >= x && b >= y && (a > x || b > y))
        })
        .collect();
    front.sort_by(|&a, &b| points[a].0.total_cmp(&points[b].0));
    front
}

/// A configuration's family: the label before a `[` (sweeps), or before
/// a last `-` part that holds a number (`dllm-threshold-09` →
/// `dllm-threshold`, `dllm-confidence-k32` → `dllm-confidence`);
/// otherwise the label itself (`learn2pd-no-eot`).
pub fn family(label: &str) -> String {
    if let Some((f, _)) = label.split_once('[') {
        return f.to_string();
    }
    match label.rsplit_once('-') {
        Some((f, last)) if last.chars().any(|c| c.is_ascii_digit()) => f.to_string(),
        _ => label.to_string(),
    }
}

/// One configuration in the quality-speed plane.
pub struct PlanePoint {
    pub label: String,
    pub family: String,
    pub x: f64,
    pub y: f64,
}

/// ParallelBench's plane: score against a speed axis (log scale), one
/// marker per configuration by family, the Pareto front joined and
/// labelled, PBx marks, and a legend beside the plot with a note per
/// family (its AUP).
pub struct Plane {
    pub title: String,
    pub x_desc: String,
    pub points: Vec<PlanePoint>,
    /// (thresholds, tokens per step) of PBx marks sharing one value.
    pub pbx: Vec<(Vec<f64>, f64)>,
    pub family_notes: Vec<(String, String)>,
}

impl Plane {
    fn families(&self) -> Vec<String> {
        let mut f: Vec<String> = self.points.iter().map(|p| p.family.clone()).collect();
        f.sort();
        f.dedup();
        f
    }
}

impl Figure for Plane {
    fn size(&self) -> (u32, u32) {
        (1500, 860)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), String>
    where
        DB::ErrorType: 'static,
    {
        root.fill(&WHITE).map_err(pe)?;
        let families = self.families();
        let entries: Vec<Entry> = families
            .iter()
            .enumerate()
            .map(|(k, f)| {
                let note = self
                    .family_notes
                    .iter()
                    .find(|(n, _)| n == f)
                    .map(|(_, t)| format!(" {t}"))
                    .unwrap_or_default();
                entry(format!("{f}{note}"), k)
            })
            .collect();
        let legend_w = legend_width(&entries);
        let (plot_area, legend_area) = root.split_horizontally(self.size().0 - legend_w);
        let xs = || {
            self.points
                .iter()
                .map(|p| p.x)
                .filter(|x| x.is_finite() && *x > 0.0)
        };
        let min_x = xs().fold(f64::INFINITY, f64::min).min(1.0);
        let max_x = xs().fold(0.0f64, f64::max).max(1.0);
        // The score axis starts below the lowest point (in tens), not at 0,
        // so that close scores stay apart.
        let min_y = self
            .points
            .iter()
            .map(|p| p.y)
            .filter(|y| y.is_finite())
            .fold(100.0, f64::min);
        let min_y = (((min_y - 5.0) / 10.0).floor() * 10.0).clamp(0.0, 90.0);
        let mut chart = ChartBuilder::on(&plot_area)
            .caption(&self.title, ("sans-serif", CAPTION))
            .margin(20)
            .x_label_area_size(80)
            .y_label_area_size(90)
            .build_cartesian_2d((min_x * 0.75..max_x * 1.5).log_scale(), min_y..104.0)
            .map_err(pe)?;
        // plotters' log axis crowds its labels; ticks on the 1-2-5 series
        // are drawn here instead.
        chart
            .configure_mesh()
            .x_labels(0)
            .x_label_formatter(&|_| String::new())
            .disable_x_mesh()
            .y_label_formatter(&|y| format!("{y:.0}"))
            .x_desc(self.x_desc.as_str())
            .y_desc("mean score over tasks (×100)")
            .label_style(("sans-serif", LABEL))
            .axis_desc_style(("sans-serif", NOTE))
            .draw()
            .map_err(pe)?;
        let (xr, yr) = chart.plotting_area().get_pixel_range();
        let style = ("sans-serif", NOTE).into_font().into_text_style(root);
        let tick_style = ("sans-serif", LABEL)
            .into_font()
            .into_text_style(root)
            .pos(Pos::new(HPos::Center, VPos::Top));
        for t in log_ticks(min_x * 0.75, max_x * 1.5) {
            chart
                .draw_series(std::iter::once(PathElement::new(
                    vec![(t, min_y), (t, 104.0)],
                    BLACK.mix(0.15).stroke_width(1),
                )))
                .map_err(pe)?;
            let (px, _) = chart.backend_coord(&(t, min_y));
            root.draw(&PathElement::new(
                vec![(px, yr.end), (px, yr.end + 6)],
                BLACK,
            ))
            .map_err(pe)?;
            root.draw(&Text::new(tick(&t), (px, yr.end + 10), tick_style.clone()))
                .map_err(pe)?;
        }
        let fam_index = |f: &str| families.iter().position(|x| x == f).unwrap_or(0);
        // Taken pixel boxes: markers, then labels as they are placed.
        let mut taken: Vec<(i32, i32, i32, i32)> = Vec::new();
        for p in &self.points {
            if !(p.x.is_finite() && p.x > 0.0 && p.y.is_finite()) {
                continue;
            }
            let k = fam_index(&p.family);
            let (px, py) = chart.backend_coord(&(p.x, p.y));
            root.draw(&pixel_marker(shape(k), (px, py), 8, color(k)))
                .map_err(pe)?;
            taken.push((px - 9, py - 9, px + 9, py + 9));
        }
        let pts: Vec<(f64, f64)> = self.points.iter().map(|p| (p.x, p.y)).collect();
        let front = pareto_front(&pts);
        chart
            .draw_series(LineSeries::new(
                front.iter().map(|&i| pts[i]),
                BLACK.stroke_width(2),
            ))
            .map_err(pe)?;
        // PBx: a dashed line from the axis up to the highest threshold that
        // reaches the value, labelled at the foot.
        for (ts, v) in &self.pbx {
            let top = ts.iter().copied().fold(f64::MIN, f64::max);
            chart
                .draw_series(DashedLineSeries::new(
                    vec![(*v, min_y), (*v, top)],
                    10,
                    6,
                    RGBColor(90, 90, 90).stroke_width(2),
                ))
                .map_err(pe)?;
            let text = format!(
                "PB{} = {v:.2}",
                ts.iter()
                    .map(|t| format!("{t:.0}"))
                    .collect::<Vec<_>>()
                    .join("/")
            );
            let at = chart.backend_coord(&(*v, top));
            // Labels keep off the line.
            taken.push((at.0 - 3, at.1, at.0 + 3, yr.end));
            let b = place_label(at, text_box(root, &text, &style)?, &taken, (&xr, &yr));
            root.draw(&Text::new(text, (b.0, b.1), style.clone()))
                .map_err(pe)?;
            taken.push((b.0, b.1, b.2, b.3));
        }
        // Front labels; configurations at one point share one.
        let mut labelled: Vec<(usize, usize)> = Vec::new();
        for &i in &front {
            match labelled.iter_mut().find(|(j, _)| pts[*j] == pts[i]) {
                Some((_, n)) => *n += 1,
                None => labelled.push((i, 0)),
            }
        }
        for (i, more) in labelled {
            let text = if more > 0 {
                format!("{} (+{more})", self.points[i].label)
            } else {
                self.points[i].label.clone()
            };
            let (px, py) = chart.backend_coord(&pts[i]);
            let b = place_label((px, py), text_box(root, &text, &style)?, &taken, (&xr, &yr));
            if b.4 {
                // Far from its point: a leader line.
                let (cx, cy) = ((b.0 + b.2) / 2, if b.1 > py { b.1 } else { b.3 });
                root.draw(&PathElement::new(vec![(px, py), (cx, cy)], BLACK.mix(0.5)))
                    .map_err(pe)?;
            }
            root.draw(&Text::new(text, (b.0, b.1), style.clone()))
                .map_err(pe)?;
            taken.push((b.0, b.1, b.2, b.3));
        }
        legend_area.fill(&WHITE).map_err(pe)?;
        draw_legend(&legend_area, &entries, false, root)
    }
}

/// Ticks on the 1-2-5 series within [lo, hi].
fn log_ticks(lo: f64, hi: f64) -> Vec<f64> {
    if !(lo > 0.0 && hi > lo) {
        return vec![];
    }
    let mut out = Vec::new();
    for e in lo.log10().floor() as i32..=hi.log10().ceil() as i32 {
        for m in [1.0, 2.0, 5.0] {
            let t = m * 10f64.powi(e);
            if t >= lo && t <= hi {
                out.push(t);
            }
        }
    }
    out
}

/// The pixels a label takes: its estimated extent, padded to a full line
/// (the estimate covers the glyphs only).
fn text_box<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    text: &str,
    style: &TextStyle,
) -> Result<(i32, i32), String> {
    let (w, h) = root.estimate_text_size(text, style).map_err(pe)?;
    Ok((w as i32 + 4, (h as i32).max(NOTE as i32 * 5 / 4) + 2))
}

/// A spot for a `size` label near `at` (pixels) that overlaps no `taken`
/// box and stays inside the plot: the nearest of rings of candidates
/// around the point, or the least-overlapping one. Returns the box and
/// whether it sits away from the point (worth a leader line).
fn place_label(
    at: (i32, i32),
    size: (i32, i32),
    taken: &[(i32, i32, i32, i32)],
    area: (&std::ops::Range<i32>, &std::ops::Range<i32>),
) -> (i32, i32, i32, i32, bool) {
    let ((px, py), (w, h)) = (at, size);
    let overlap = |b: &(i32, i32, i32, i32)| -> i64 {
        taken
            .iter()
            .map(|t| {
                let dx = (b.2.min(t.2) - b.0.max(t.0)).max(0) as i64;
                let dy = (b.3.min(t.3) - b.1.max(t.1)).max(0) as i64;
                dx * dy
            })
            .sum()
    };
    let inside = |b: &(i32, i32, i32, i32)| {
        b.0 >= area.0.start && b.2 <= area.0.end && b.1 >= area.1.start && b.3 <= area.1.end
    };
    let mut best: Option<((i32, i32, i32, i32), i64, bool)> = None;
    for ring in 0..4 {
        let d = 10 + ring * (h + 4);
        let far = ring > 0;
        for (x0, y0) in [
            (px + 12, py - h - d + 8),
            (px + 12, py + d - 8),
            (px - 12 - w, py - h - d + 8),
            (px - 12 - w, py + d - 8),
            (px - w / 2, py - h - d),
            (px - w / 2, py + d),
        ] {
            let b = (x0, y0, x0 + w, y0 + h);
            if !inside(&b) {
                continue;
            }
            let o = overlap(&b);
            if o == 0 {
                return (b.0, b.1, b.2, b.3, far);
            }
            if best.as_ref().is_none_or(|(_, bo, _)| o < *bo) {
                best = Some((b, o, far));
            }
        }
    }
    match best {
        Some((b, _, far)) => (b.0, b.1, b.2, b.3, far),
        None => (px + 12, py - h, px + 12 + w, py, false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_keep_off_taken_boxes_and_inside_the_plot() {
        let area = (0..1000, 0..600);
        // The spot right above the point is taken; the label goes elsewhere.
        let taken = vec![(100, 270, 400, 300), (95, 295, 105, 305)];
        let b = place_label((100, 300), (120, 26), &taken, (&area.0, &area.1));
        let boxed = (b.0, b.1, b.2, b.3);
        for t in &taken {
            let dx = boxed.2.min(t.2) - boxed.0.max(t.0);
            let dy = boxed.3.min(t.3) - boxed.1.max(t.1);
            assert!(dx <= 0 || dy <= 0, "{boxed:?} overlaps {t:?}");
        }
        assert!(b.0 >= 0 && b.2 <= 1000 && b.1 >= 0 && b.3 <= 600);
        // At the right edge, labels go left of the point.
        let b = place_label((990, 300), (120, 26), &[], (&area.0, &area.1));
        assert!(b.2 <= 1000 && b.0 < 990, "{b:?}");
    }

    #[test]
    fn log_ticks_follow_the_1_2_5_series() {
        assert_eq!(log_ticks(0.3, 12.0), vec![0.5, 1.0, 2.0, 5.0, 10.0]);
        assert_eq!(log_ticks(0.02, 0.06), vec![0.02, 0.05]);
        assert!(log_ticks(0.0, 1.0).is_empty());
        assert_eq!(tick(&0.5), "0.5");
        assert_eq!(tick(&2.0), "2");
        assert_eq!(tick(&20.0), "20");
    }

    #[test]
    fn families_drop_a_numbered_last_part_only() {
        assert_eq!(family("dllm-threshold-09"), "dllm-threshold");
        assert_eq!(family("dllm-confidence-k32"), "dllm-confidence");
        assert_eq!(family("learn2pd-no-eot"), "learn2pd-no-eot");
        assert_eq!(family("dllm[threshold=0.7]"), "dllm");
        assert_eq!(family("sps"), "sps");
    }

    #[test]
    fn pareto_front_keeps_undominated_points_by_speed() {
        let pts = [
            (1.0, 98.0),
            (2.0, 98.0),
            (3.0, 90.0),
            (2.5, 80.0),
            (0.5, 99.0),
        ];
        assert_eq!(pareto_front(&pts), vec![4, 1, 2]);
    }
}
