//! The SVG charts of `clo eval report` and the quickstart, drawn by plotters' SVG backend:
//! grouped bars (one group per language, one bar per system, ±1 standard error) and lines over
//! a numeric x axis (log scale when the points span more than a factor of 4).

use std::collections::{BTreeMap, BTreeSet};

use plotters::coord::Shift;
use plotters::coord::ranged1d::ValueFormatter;
use plotters::coord::types::RangedCoordf64;
use plotters::element::ErrorBar;
use plotters::prelude::*;

use super::report::{Estimate, Grid};

const SIZE: (u32, u32) = (720, 360);
/// Colours of the series, in order (Tableau 10).
const PALETTE: [RGBColor; 8] = [
    RGBColor(0x4e, 0x79, 0xa7),
    RGBColor(0xf2, 0x8e, 0x2b),
    RGBColor(0x59, 0xa1, 0x4f),
    RGBColor(0xe1, 0x57, 0x59),
    RGBColor(0x76, 0xb7, 0xb2),
    RGBColor(0xed, 0xc9, 0x48),
    RGBColor(0xb0, 0x7a, 0xa1),
    RGBColor(0x9c, 0x75, 0x5f),
];

fn color(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

/// Draws into an SVG string; plotters' errors (which an in-memory SVG does not raise) become a
/// chart that says so rather than a panic.
fn svg(draw: impl FnOnce(&DrawingArea<SVGBackend, Shift>) -> Result<(), String>) -> String {
    let mut out = String::new();
    let result = {
        let root = SVGBackend::with_string(&mut out, SIZE).into_drawing_area();
        root.fill(&WHITE)
            .map_err(|e| e.to_string())
            .and_then(|_| draw(&root))
            .and_then(|_| root.present().map_err(|e| e.to_string()))
    };
    if let Err(e) = result {
        tracing::warn!("chart not drawn: {e}");
    }
    out
}

/// Grouped bars: one group per language, one bar per row of the grid, with ±1 standard error.
pub fn bar_chart(title: &str, y_label: &str, g: &Grid) -> String {
    let langs: Vec<String> = g
        .values()
        .flat_map(|m| m.keys().cloned())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let labels: Vec<&String> = g.keys().collect();
    let groups = langs.len().max(1) as f64;
    svg(|root| {
        let mut chart = ChartBuilder::on(root)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(30)
            .y_label_area_size(50)
            .build_cartesian_2d(0f64..groups, 0f64..1f64)
            .map_err(|e| e.to_string())?;
        // Ticks every half group: the language names sit on the groups' centres.
        chart
            .configure_mesh()
            .disable_x_mesh()
            .max_light_lines(0)
            .y_labels(6)
            .x_labels(2 * langs.len() + 1)
            .x_label_formatter(&|x| {
                let i = x.floor() as usize;
                if (x.fract() - 0.5).abs() < 1e-6 && i < langs.len() {
                    langs[i].clone()
                } else {
                    String::new()
                }
            })
            .y_desc(y_label)
            .draw()
            .map_err(|e| e.to_string())?;
        let bar_w = 0.8 / labels.len().max(1) as f64;
        for (bi, label) in labels.iter().enumerate() {
            let c = color(bi);
            let bars: Vec<(f64, Estimate)> = langs
                .iter()
                .enumerate()
                .filter_map(|(gi, lang)| {
                    g[*label]
                        .get(lang)
                        .map(|e| (gi as f64 + 0.1 + bar_w * bi as f64, *e))
                })
                .collect();
            chart
                .draw_series(bars.iter().map(|(x, e)| {
                    Rectangle::new(
                        [(*x, 0.0), (*x + bar_w * 0.9, e.value.clamp(0.0, 1.0))],
                        c.filled(),
                    )
                }))
                .map_err(|e| e.to_string())?
                .label(label.as_str())
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], c.filled()));
            chart
                .draw_series(bars.iter().filter(|(_, e)| e.stderr > 0.0).map(|(x, e)| {
                    ErrorBar::new_vertical(
                        *x + bar_w * 0.45,
                        (e.value - e.stderr).clamp(0.0, 1.0),
                        e.value.clamp(0.0, 1.0),
                        (e.value + e.stderr).clamp(0.0, 1.0),
                        BLACK,
                        6,
                    )
                }))
                .map_err(|e| e.to_string())?;
        }
        legend(&mut chart)
    })
}

fn legend<'a, X: Ranged, Y: Ranged>(
    chart: &mut ChartContext<'a, SVGBackend<'a>, Cartesian2d<X, Y>>,
) -> Result<(), String> {
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK.mix(0.3))
        .draw()
        .map_err(|e| e.to_string())
}

/// Lines over a numeric x axis (log scale when the points span more than a factor of 4), with
/// ±1 standard error bars.
pub fn line_chart(
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &BTreeMap<String, Vec<(f64, Estimate)>>,
) -> String {
    let xs: Vec<f64> = series.values().flatten().map(|p| p.0).collect();
    let (lo, hi) = xs
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), x| (a.min(*x), b.max(*x)));
    let (lo, hi) = if xs.is_empty() { (0.0, 1.0) } else { (lo, hi) };
    let log = lo > 0.0 && hi / lo > 4.0;
    svg(|root| {
        let builder = |root| {
            let mut b = ChartBuilder::on(root);
            b.caption(title, ("sans-serif", 18))
                .margin(12)
                .x_label_area_size(40)
                .y_label_area_size(50);
            b
        };
        if log {
            let mut chart = builder(root)
                .build_cartesian_2d((lo * 0.8..hi * 1.25).log_scale(), 0f64..1f64)
                .map_err(|e| e.to_string())?;
            draw_lines(&mut chart, x_label, y_label, series)
        } else {
            let pad = ((hi - lo) * 0.05).max(0.5);
            let mut chart = builder(root)
                .build_cartesian_2d(lo - pad..hi + pad, 0f64..1f64)
                .map_err(|e| e.to_string())?;
            draw_lines(&mut chart, x_label, y_label, series)
        }
    })
}

fn draw_lines<'a, X>(
    chart: &mut ChartContext<'a, SVGBackend<'a>, Cartesian2d<X, RangedCoordf64>>,
    x_label: &str,
    y_label: &str,
    series: &BTreeMap<String, Vec<(f64, Estimate)>>,
) -> Result<(), String>
where
    X: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    chart
        .configure_mesh()
        .max_light_lines(0)
        .y_labels(6)
        .x_desc(x_label)
        .y_desc(y_label)
        .x_label_formatter(&|x| format!("{}", x.round()))
        .draw()
        .map_err(|e| e.to_string())?;
    for (i, (name, pts)) in series.iter().enumerate() {
        let c = color(i);
        chart
            .draw_series(LineSeries::new(
                pts.iter().map(|(x, e)| (*x, e.value.clamp(0.0, 1.0))),
                c.stroke_width(2),
            ))
            .map_err(|e| e.to_string())?
            .label(name.as_str())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 14, y)], c.stroke_width(2)));
        chart
            .draw_series(
                pts.iter()
                    .map(|(x, e)| Circle::new((*x, e.value.clamp(0.0, 1.0)), 4, c.filled())),
            )
            .map_err(|e| e.to_string())?;
        chart
            .draw_series(pts.iter().filter(|(_, e)| e.stderr > 0.0).map(|(x, e)| {
                ErrorBar::new_vertical(
                    *x,
                    (e.value - e.stderr).clamp(0.0, 1.0),
                    e.value.clamp(0.0, 1.0),
                    (e.value + e.stderr).clamp(0.0, 1.0),
                    c,
                    6,
                )
            }))
            .map_err(|e| e.to_string())?;
    }
    legend(chart)
}

/// Elements `<tag ...>` of an SVG filled, or stroked 2 px wide, in a series colour (bars, points,
/// lines, legend entries; not the thin error bars): what tests count to check that a chart shows
/// each series.
#[cfg(test)]
pub(crate) fn series_marks(svg: &str, tag: &str) -> usize {
    let colours: Vec<String> = PALETTE
        .iter()
        .map(|c| format!("#{:02X}{:02X}{:02X}\"", c.0, c.1, c.2))
        .collect();
    svg.split('<')
        .filter(|e| e.starts_with(&format!("{tag} ")))
        .filter(|e| {
            colours.iter().any(|c| {
                e.contains(&format!("fill=\"{c}"))
                    || (e.contains(&format!("stroke=\"{c}")) && e.contains("stroke-width=\"2\""))
            })
        })
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn est(value: f64, stderr: f64) -> Estimate {
        Estimate { value, stderr }
    }

    /// A bar per (system, language) and a legend swatch per system, each in its system's colour;
    /// a line and a legend entry per series; the axis labels name the languages and the sizes.
    #[test]
    fn charts_draw_every_series() {
        let mut g = Grid::new();
        for (name, en, sw) in [("clo", 0.9, 0.7), ("sft", 0.8, 0.4), ("base", 0.95, 0.1)] {
            g.insert(
                name.into(),
                BTreeMap::from([("en".into(), est(en, 0.05)), ("sw".into(), est(sw, 0.1))]),
            );
        }
        let bars = bar_chart("Language fidelity", "fidelity", &g);
        assert!(bars.starts_with("<svg") && bars.trim_end().ends_with("</svg>"));
        assert_eq!(series_marks(&bars, "rect"), 3 * 2 + 3, "{bars}");
        for text in [
            "Language fidelity",
            "fidelity",
            ">\nen\n<",
            ">\nsw\n<",
            ">\nbase\n<",
        ] {
            assert!(bars.contains(text), "{text} in {bars}");
        }
        let series = BTreeMap::from([
            (
                "clo".to_string(),
                vec![(10.0, est(0.5, 0.1)), (100.0, est(0.8, 0.0))],
            ),
            (
                "sft".to_string(),
                vec![(10.0, est(0.3, 0.0)), (100.0, est(0.5, 0.05))],
            ),
        ]);
        let lines = line_chart("Fidelity", "training quadruples", "fidelity", &series);
        assert_eq!(series_marks(&lines, "polyline"), 2 * 2, "{lines}");
        assert_eq!(series_marks(&lines, "circle"), 2 * 2, "{lines}");
        assert!(lines.contains(">\n100\n<") && lines.contains("training quadruples"));
    }
}
