//! Keeps the Grafana dashboard (`deploy/grafana/dengine.json`) honest:
//! every `dengine_*` and `grpc_server_*` metric its queries read must be
//! one the code records (a quoted name in some `crates/*/src/**/*.rs`; a
//! histogram's `_bucket`, `_sum` and `_count` series count as its name),
//! its panel ids must be unique, its panels must not overlap, and each of
//! its rows must hold a panel. A metric renamed or dropped in the code
//! fails here, naming the metric and the panel that reads it.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use serde_json::Value;

/// The rows an operator looks for, each with at least one panel.
const ROWS: [&str; 6] = [
    "Cluster",
    "Replication",
    "Latency",
    "Client API",
    "Network",
    "Store",
];

/// Names of the metrics the dashboard must find in the code.
const PREFIXES: [&str; 2] = ["dengine_", "grpc_server_"];

/// The series a histogram is rendered as, beside its name.
const HISTOGRAM_SUFFIXES: [&str; 3] = ["_bucket", "_sum", "_count"];

/// Grafana's grid is 24 columns wide.
const GRID_WIDTH: i64 = 24;

/// The workspace's root: `../../` from this package, as cargo gives it
/// when the test runs (not when it was built: a target directory shared
/// by two clones must read this clone's files).
fn workspace() -> PathBuf {
    let package = std::env::var("CARGO_MANIFEST_DIR")
        .expect("cargo sets CARGO_MANIFEST_DIR when it runs a test");
    Path::new(&package).join("../..")
}

/// The Rust sources of the workspace's crates, and the histograms they
/// record.
struct Code {
    /// (path, text) of every `.rs` file under `crates/*/src`.
    files: Vec<(PathBuf, String)>,
    /// Names given to `histogram!(` or `describe_histogram!(`.
    histograms: BTreeSet<String>,
}

impl Code {
    /// Reads every `.rs` file under `root/crates/*/src`.
    fn read(root: &Path) -> Code {
        let crates = root.join("crates");
        let mut dirs: Vec<PathBuf> = std::fs::read_dir(&crates)
            .unwrap_or_else(|e| panic!("{}: {e}", crates.display()))
            .map(|entry| entry.expect("a directory entry").path().join("src"))
            .filter(|src| src.is_dir())
            .collect();
        dirs.sort();
        let mut paths = Vec::new();
        for dir in &dirs {
            rust_files(dir, &mut paths);
        }
        let files: Vec<(PathBuf, String)> = paths
            .into_iter()
            .map(|path| {
                let text = std::fs::read_to_string(&path)
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                (path, text)
            })
            .collect();
        let histograms = files
            .iter()
            .flat_map(|(_, text)| histogram_names(text))
            .collect();
        Code { files, histograms }
    }

    /// Whether `name` is written as a string literal in some source file.
    fn quotes(&self, name: &str) -> bool {
        let quoted = format!("\"{name}\"");
        self.files.iter().any(|(_, text)| text.contains(&quoted))
    }

    /// The name the code records `series` under: a histogram's for its
    /// `_bucket`, `_sum` and `_count` series, else `series` itself.
    fn recorded_name<'a>(&self, series: &'a str) -> &'a str {
        for suffix in HISTOGRAM_SUFFIXES {
            if let Some(base) = series.strip_suffix(suffix)
                && self.histograms.contains(base)
            {
                return base;
            }
        }
        series
    }
}

/// Adds the `.rs` files under `dir` (recursively) to `out`, in order.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("a directory entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            out.push(path);
        }
    }
}

/// The string literals that open a `histogram!(` or
/// `describe_histogram!(` call in `text`.
fn histogram_names(text: &str) -> Vec<String> {
    const CALL: &str = "histogram!(";
    text.match_indices(CALL)
        .filter_map(|(at, _)| {
            let rest = text[at + CALL.len()..].trim_start().strip_prefix('"')?;
            let end = rest.find('"')?;
            Some(rest[..end].to_string())
        })
        .collect()
}

/// The identifiers in a PromQL expression that name one of our metrics.
fn metric_names(expr: &str) -> impl Iterator<Item = &str> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|word| PREFIXES.iter().any(|prefix| word.starts_with(prefix)))
}

/// A panel of the dashboard, wherever it is.
struct Panel<'a> {
    json: &'a Value,
    title: String,
    /// The row it is under (in its `panels` if collapsed, else after it).
    row: Option<String>,
    /// In the dashboard's own `panels` (laid out on the grid as it is),
    /// not folded in a collapsed row.
    top_level: bool,
}

impl Panel<'_> {
    fn is_row(&self) -> bool {
        self.json["type"] == "row"
    }

    /// Its targets' PromQL expressions.
    fn exprs(&self) -> Vec<&str> {
        self.json["targets"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|target| target["expr"].as_str())
            .collect()
    }
}

/// Every panel of `dashboard`, rows and the panels nested in them
/// included, in the file's order.
fn panels(dashboard: &Value) -> Vec<Panel<'_>> {
    let mut out = Vec::new();
    let mut row: Option<String> = None;
    for json in dashboard["panels"].as_array().into_iter().flatten() {
        let title = json["title"].as_str().unwrap_or("(untitled)").to_string();
        if json["type"] == "row" {
            row = Some(title.clone());
            out.push(Panel {
                json,
                title: title.clone(),
                row: None,
                top_level: true,
            });
            for nested in json["panels"].as_array().into_iter().flatten() {
                out.push(Panel {
                    json: nested,
                    title: nested["title"].as_str().unwrap_or("(untitled)").to_string(),
                    row: Some(title.clone()),
                    top_level: false,
                });
            }
        } else {
            out.push(Panel {
                json,
                title,
                row: row.clone(),
                top_level: true,
            });
        }
    }
    out
}

/// A panel's place on the grid, in cells.
#[derive(Clone, Copy)]
struct Rect {
    x: i64,
    y: i64,
    w: i64,
    h: i64,
}

impl Rect {
    /// The panel's `gridPos`.
    fn of(panel: &Value) -> Option<Rect> {
        let g = &panel["gridPos"];
        Some(Rect {
            x: g["x"].as_i64()?,
            y: g["y"].as_i64()?,
            w: g["w"].as_i64()?,
            h: g["h"].as_i64()?,
        })
    }

    fn inside_grid(self) -> bool {
        self.x >= 0 && self.y >= 0 && self.w > 0 && self.h > 0 && self.x + self.w <= GRID_WIDTH
    }

    fn overlaps(self, o: Rect) -> bool {
        self.x < o.x + o.w && o.x < self.x + self.w && self.y < o.y + o.h && o.y < self.y + self.h
    }
}

/// What is wrong with `dashboard` against `code`: one line per problem.
fn check(dashboard: &Value, code: &Code) -> Vec<String> {
    let mut problems = Vec::new();
    let panels = panels(dashboard);
    if panels.is_empty() {
        problems.push("the dashboard has no panels".to_string());
    }

    // Ids, unique over rows and panels alike.
    let mut ids: HashMap<i64, &str> = HashMap::new();
    for p in &panels {
        match p.json["id"].as_i64() {
            None => problems.push(format!("panel `{}` has no numeric id", p.title)),
            Some(id) => {
                if let Some(first) = ids.insert(id, &p.title) {
                    problems.push(format!(
                        "panel id {id} is used by both `{first}` and `{}`",
                        p.title
                    ));
                }
            }
        }
    }

    // Every metric read is one the code records.
    for p in panels.iter().filter(|p| !p.is_row()) {
        let exprs = p.exprs();
        if exprs.is_empty() {
            problems.push(format!("panel `{}` has no query", p.title));
        }
        for expr in exprs {
            for series in metric_names(expr) {
                let name = code.recorded_name(series);
                if !code.quotes(name) {
                    problems.push(format!(
                        "panel `{}` reads metric `{series}`, which no crates/*/src/**/*.rs records \
                         (no \"{name}\" there); its query: {expr}",
                        p.title
                    ));
                }
            }
        }
    }
    // The template variables' queries too (e.g. the instances' list).
    for var in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let query = match &var["query"] {
            Value::String(q) => Some(q.as_str()),
            q => q["query"].as_str(),
        };
        for series in query.into_iter().flat_map(metric_names) {
            if !code.quotes(code.recorded_name(series)) {
                problems.push(format!(
                    "variable `{}` reads metric `{series}`, which no crates/*/src/**/*.rs records",
                    var["name"].as_str().unwrap_or("(unnamed)")
                ));
            }
        }
    }

    // Each row an operator looks for, with a panel in it.
    for row in ROWS {
        if !panels.iter().any(|p| p.is_row() && p.title == row) {
            problems.push(format!("there is no row `{row}`"));
        } else if !panels
            .iter()
            .any(|p| !p.is_row() && p.row.as_deref() == Some(row))
        {
            problems.push(format!("row `{row}` has no panel"));
        }
    }

    // The grid: inside its width, and no two panels on one cell.
    let placed: Vec<(&Panel, Rect)> = panels
        .iter()
        .filter(|p| p.top_level)
        .filter_map(|p| match Rect::of(p.json) {
            Some(r) => Some((p, r)),
            None => {
                problems.push(format!("panel `{}` has no gridPos", p.title));
                None
            }
        })
        .collect();
    for (i, (a, ra)) in placed.iter().enumerate() {
        if !ra.inside_grid() {
            problems.push(format!("panel `{}` lies outside the grid", a.title));
        }
        for (b, rb) in &placed[i + 1..] {
            if ra.overlaps(*rb) {
                problems.push(format!(
                    "panels `{}` and `{}` overlap on the grid",
                    a.title, b.title
                ));
            }
        }
    }
    problems
}

#[test]
fn the_dashboard_reads_only_metrics_the_code_records() {
    let root = workspace();
    let path = root.join("deploy/grafana/dengine.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let dashboard: Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: not JSON: {e}", path.display()));
    let code = Code::read(&root);
    assert!(
        !code.histograms.is_empty(),
        "the sources under crates/*/src record histograms; none found"
    );
    let problems = check(&dashboard, &code);
    assert!(
        problems.is_empty(),
        "{}:\n{}",
        path.display(),
        problems.join("\n")
    );
    // The check saw what it checks: every row's panels and their queries.
    let panels = panels(&dashboard);
    let metrics: BTreeSet<&str> = panels
        .iter()
        .flat_map(|p| p.exprs())
        .flat_map(metric_names)
        .map(|series| code.recorded_name(series))
        .collect();
    assert!(metrics.len() > 30, "only {} metrics read", metrics.len());
    println!(
        "{} panels, {} metrics checked against {} source files",
        panels.iter().filter(|p| !p.is_row()).count(),
        metrics.len(),
        code.files.len()
    );
}

#[test]
fn a_metric_the_code_does_not_record_is_reported() {
    let code = Code::read(&workspace());
    // A collapsed row holds its panels; the others follow their row.
    let dashboard: Value = serde_json::from_str(
        r#"{"panels": [
            {"id": 1, "type": "row", "title": "Cluster", "collapsed": true,
             "gridPos": {"x": 0, "y": 0, "w": 24, "h": 1},
             "panels": [
                {"id": 2, "type": "timeseries", "title": "Bogus panel",
                 "gridPos": {"x": 0, "y": 1, "w": 12, "h": 8},
                 "targets": [{"expr": "rate(dengine_no_such_metric[$__rate_interval]) + on(instance) dengine_raft_term"}]}
             ]},
            {"id": 3, "type": "row", "title": "Latency",
             "gridPos": {"x": 0, "y": 1, "w": 24, "h": 1}},
            {"id": 4, "type": "timeseries", "title": "Fsync",
             "gridPos": {"x": 0, "y": 2, "w": 12, "h": 8},
             "targets": [
                {"expr": "histogram_quantile(0.99, sum by (le) (rate(dengine_disk_fsync_duration_seconds_bucket[5m])))"},
                {"expr": "rate(grpc_server_handling_seconds_count[5m]) / rate(dengine_raft_term_count[5m])"}
             ]}
        ]}"#,
    )
    .expect("JSON");
    let problems = check(&dashboard, &code);
    let about = |metric: &str, panel: &str| {
        problems
            .iter()
            .any(|p| p.contains(&format!("`{metric}`")) && p.contains(&format!("`{panel}`")))
    };
    // Nested in a collapsed row, and named with its panel.
    assert!(
        about("dengine_no_such_metric", "Bogus panel"),
        "{problems:#?}"
    );
    // `_count` of a gauge is no series of the code's.
    assert!(about("dengine_raft_term_count", "Fsync"), "{problems:#?}");
    // Recorded metrics, and histograms' series, pass.
    for fine in [
        "dengine_raft_term",
        "dengine_disk_fsync_duration_seconds_bucket",
        "grpc_server_handling_seconds_count",
    ] {
        assert!(
            !problems.iter().any(|p| p.contains(&format!("`{fine}`"))),
            "{fine} reported: {problems:#?}"
        );
    }
    // Rows missing from the small dashboard are reported too.
    assert!(problems.iter().any(|p| p.contains("no row `Store`")));
    assert!(!problems.iter().any(|p| p.contains("`Cluster`")));
}

#[test]
fn duplicate_ids_and_overlaps_are_reported() {
    let code = Code::read(&workspace());
    let dashboard: Value = serde_json::from_str(
        r#"{"panels": [
            {"id": 1, "type": "row", "title": "Cluster",
             "gridPos": {"x": 0, "y": 0, "w": 24, "h": 1}},
            {"id": 2, "type": "stat", "title": "Term",
             "gridPos": {"x": 0, "y": 1, "w": 12, "h": 4},
             "targets": [{"expr": "dengine_raft_term"}]},
            {"id": 2, "type": "stat", "title": "Role",
             "gridPos": {"x": 6, "y": 2, "w": 12, "h": 4},
             "targets": [{"expr": "dengine_raft_role"}]}
        ]}"#,
    )
    .expect("JSON");
    let problems = check(&dashboard, &code);
    assert!(
        problems
            .iter()
            .any(|p| p.contains("id 2") && p.contains("`Term`") && p.contains("`Role`")),
        "{problems:#?}"
    );
    assert!(
        problems.iter().any(|p| p.contains("overlap")),
        "{problems:#?}"
    );
}
