//! PNG line plots for bench results (plotters, bitmap backend).

use std::path::Path;
use std::sync::OnceLock;

use plotters::prelude::*;

/// Registers DejaVu Sans (scripts/setup.sh installs fonts-dejavu-core) once
/// per process; false when it is missing (plots are drawn without text).
pub fn register_font() -> bool {
    static DONE: OnceLock<bool> = OnceLock::new();
    *DONE.get_or_init(|| {
        std::fs::read("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")
            .ok()
            .is_some_and(|bytes| {
                plotters::style::register_font(
                    "sans-serif",
                    FontStyle::Normal,
                    Box::leak(bytes.into_boxed_slice()),
                )
                .is_ok()
            })
    })
}

/// One named curve.
pub type Series = (String, Vec<(f64, f64)>);

const COLORS: [RGBColor; 8] = [
    RGBColor(200, 30, 30),
    RGBColor(30, 80, 200),
    RGBColor(20, 140, 60),
    RGBColor(230, 140, 0),
    RGBColor(120, 40, 160),
    RGBColor(0, 150, 160),
    RGBColor(90, 90, 90),
    RGBColor(0, 0, 0),
];

/// Draws `series` into a 1200x600 PNG at `path`. `log_x` puts x on a log scale
/// (for latency CDFs); `dashed` series (name ends in " (sent)") are thin.
pub fn lines(
    path: &Path,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    series: &[Series],
    log_x: bool,
) -> Result<(), String> {
    let labels = register_font();
    let root = BitMapBackend::new(path, (1200, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let pts = series.iter().flat_map(|(_, v)| v.iter());
    let (mut x0, mut x1, mut y1) = (f64::MAX, f64::MIN, 0.0f64);
    for &(x, y) in pts {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y1 = y1.max(y);
    }
    if x0 > x1 {
        (x0, x1) = (0.0, 1.0);
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    let y1 = if y1 <= 0.0 { 1.0 } else { y1 * 1.08 };
    let mut b = ChartBuilder::on(&root);
    b.margin(15).x_label_area_size(40).y_label_area_size(90);
    if labels {
        b.caption(title, ("sans-serif", 22));
    }
    macro_rules! draw {
        ($chart:expr) => {{
            let mut chart = $chart;
            if labels {
                chart
                    .configure_mesh()
                    .x_desc(x_desc)
                    .y_desc(y_desc)
                    .draw()
                    .map_err(|e| e.to_string())?;
            }
            for (i, (name, v)) in series.iter().enumerate() {
                let c = COLORS[i % COLORS.len()];
                let width = if name.ends_with("(sent)") { 1 } else { 2 };
                let s = chart
                    .draw_series(LineSeries::new(v.iter().copied(), c.stroke_width(width)))
                    .map_err(|e| e.to_string())?;
                if labels {
                    s.label(name.as_str()).legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2))
                    });
                }
            }
            if labels {
                chart
                    .configure_series_labels()
                    .position(SeriesLabelPosition::UpperLeft)
                    .background_style(WHITE.mix(0.85))
                    .border_style(BLACK)
                    .draw()
                    .map_err(|e| e.to_string())?;
            }
        }};
    }
    if log_x {
        let x0 = x0.max(1e-3);
        draw!(b
            .build_cartesian_2d((x0..x1.max(x0 * 10.0)).log_scale(), 0.0..y1)
            .map_err(|e| e.to_string())?);
    } else {
        draw!(b
            .build_cartesian_2d(x0..x1, 0.0..y1)
            .map_err(|e| e.to_string())?);
    }
    root.present().map_err(|e| e.to_string())
}
