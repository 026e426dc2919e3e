//! The report stage, in a real browser: headless Chromium loads `report.html` from disk with no
//! console error and no network request, its plots are drawn (a screenshot of one is not
//! blank), every image has alt text and loads, every plot has a title and axis labels, and the
//! tables sort. Without pixels (the official release), the sheets show captions.

use crate::browser::Browser;
use crate::util::*;

#[test]
fn the_report_loads_clean_in_chromium() {
    let run = demo_run();
    let html = run.join("report/report.html");
    let text = std::fs::read_to_string(&html).unwrap();
    // Self-contained: nothing refers outside the file.
    for outside in [
        "src=\"http",
        "href=\"http",
        "url(http",
        "@import",
        "src=\"//",
    ] {
        assert!(
            !text.contains(outside),
            "the report refers outside: {outside}"
        );
    }

    let mut b = Browser::start();
    let url = b.open(&html);
    let page = b.eval(
        r##"(() => {
            const imgs = [...document.images];
            const plots = [...document.querySelectorAll("svg.plot")];
            const titled = p => { const t = p.querySelector(":scope > title"); return t && t.textContent.trim().length > 0; };
            return {
                doctype: document.doctype ? document.doctype.name : null,
                lang: document.documentElement.lang,
                title: document.title,
                images: imgs.length,
                without_alt: imgs.filter(i => !(i.getAttribute("alt") || "").trim()).length,
                not_loaded: imgs.filter(i => !(i.complete && i.naturalWidth > 0)).length,
                plots: plots.length,
                untitled: plots.filter(p => !titled(p)).length,
                without_axis_labels: plots.filter(p => p.querySelectorAll(".axis-label").length < 2).length,
                sheets: document.querySelectorAll(".sheet").length,
                marks: document.querySelectorAll(".sheet .pick").length,
                sortable: document.querySelectorAll("table.sortable").length,
                provenance_rows: document.querySelectorAll("#provenance tbody tr").length,
            };
        })()"##,
    );
    assert_eq!(page["doctype"], "html");
    assert_eq!(page["lang"], "en");
    assert!(page["title"].as_str().unwrap().contains("demo"), "{page}");
    assert!(page["images"].as_u64().unwrap() > 12, "{page}");
    assert_eq!(page["without_alt"], 0, "{page}");
    assert_eq!(page["not_loaded"], 0, "{page}");
    // Three splits (all, dev, test) × four fields.
    assert_eq!(page["plots"], 12, "{page}");
    assert_eq!(page["untitled"], 0, "{page}");
    assert_eq!(page["without_axis_labels"], 0, "{page}");
    // The demo's 12 sampled queries, one pick per λ of the run.
    assert_eq!(page["sheets"], 12, "{page}");
    assert_eq!(page["marks"], 12 * scored_lambdas(&run).len(), "{page}");
    assert!(page["sortable"].as_u64().unwrap() >= 5, "{page}");
    assert_eq!(page["provenance_rows"], 1, "{page}");

    // The first plot, drawn: a screenshot of it has ink in the series' colour.
    let rect = b.eval(
        r##"(() => { const r = document.querySelector("svg.plot").getBoundingClientRect();
                    return [r.left + window.scrollX, r.top + window.scrollY, r.width, r.height]; })()"##,
    );
    let r: Vec<f64> = rect
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert!(r[2] > 100.0 && r[3] > 100.0, "{r:?}");
    let shot = b.screenshot(r[0], r[1], r[2], r[3]);
    let pixels: Vec<&image::Rgba<u8>> = shot.pixels().collect();
    let inked = pixels
        .iter()
        .filter(|p| p.0[0] < 200 || p.0[1] < 200 || p.0[2] < 200)
        .count();
    let blue = pixels
        .iter()
        .filter(|p| {
            // The first series' colour, #1f77b4, within antialiasing.
            (p.0[0] as i32 - 0x1f).abs() < 40
                && (p.0[1] as i32 - 0x77).abs() < 40
                && (p.0[2] as i32 - 0xb4).abs() < 40
        })
        .count();
    assert!(
        inked > pixels.len() / 50,
        "the plot looks blank: {inked} of {} pixels inked",
        pixels.len()
    );
    assert!(
        blue > 20,
        "no line drawn: {blue} pixels of the series colour"
    );

    // Sorting: a click on the relation table's `queries` header orders its rows by it.
    let sorted = b.eval(
        r##"(() => {
            const table = document.querySelector("#breakdowns details[open] table.sortable");
            const th = table.tHead.rows[0].cells[1];
            th.click(); th.click();
            const v = [...table.tBodies[0].rows].map(r => parseFloat(r.cells[1].getAttribute("data-v")));
            return { values: v, class: th.className };
        })()"##,
    );
    let v: Vec<f64> = sorted["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    assert!(v.len() > 1, "{sorted}");
    assert!(v.windows(2).all(|w| w[0] <= w[1]), "not ascending: {v:?}");
    assert_eq!(sorted["class"], "asc");

    let log = b.log(&url);
    assert!(log.errors.is_empty(), "console errors: {:?}", log.errors);
    assert!(
        log.requests.is_empty(),
        "network requests: {:?}",
        log.requests
    );
}

/// Same run, same settings: the same bytes (the sample is seeded); another seed draws other
/// queries; `--out` writes a copy; other runs are drawn beside.
#[test]
fn the_report_is_reproducible_and_compares_runs() {
    let demo = demo_run();
    let dir = tempdir();
    let run = dir.path().join("copy");
    copy_dir(&demo, &run);
    run_ok(&["report", s(&run), "--force"], 0);
    let first = std::fs::read(run.join("report/report.html")).unwrap();
    run_ok(&["report", s(&run), "--force"], 0);
    let again = std::fs::read(run.join("report/report.html")).unwrap();
    assert!(again == first, "the same run made two different reports");

    let out = dir.path().join("elsewhere.html");
    let other = dir.path().join("other");
    copy_dir(&demo, &other);
    run_ok(&["retrieve", s(&other), "--lambdas", "0.5,1.5"], 0);
    run_ok(&["score", s(&other), "--oracle", "labels"], 0);
    run_ok(
        &[
            "report",
            s(&run),
            s(&other),
            "--seed",
            "1",
            "--out",
            s(&out),
        ],
        0,
    );
    let html = std::fs::read_to_string(&out).unwrap();
    assert_eq!(
        html,
        std::fs::read_to_string(run.join("report/report.html")).unwrap()
    );
    assert!(html.contains("copy vs other"), "the title names both runs");
    // One legend entry per run, and the other run's λ on the axes.
    assert_eq!(html.matches("<span class=\"swatch\"").count(), 2);
    // Each line has its intervals' band: two runs in 3 splits × 4 fields.
    assert_eq!(html.matches("<polygon class=\"band\"").count(), 2 * 12);
    assert!(html.contains("other: λ = 1.5"));
    // The leaderboard section holds `simat leaderboard`'s rows, λ chosen on dev.
    let board: Vec<serde_json::Value> = serde_json::from_slice(
        &run_ok(&["leaderboard", s(&run), s(&other), "--format", "json"], 0).stdout,
    )
    .unwrap();
    let section = html
        .split("<section id=\"leaderboard\">")
        .nth(1)
        .unwrap()
        .split("</section>")
        .next()
        .unwrap();
    assert_eq!(board.len(), 2);
    assert_eq!(section.matches("<tr><td>").count(), 2, "{section}");
    for row in &board {
        let cells = format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td data-v=\"{}\">",
            row["run"].as_str().unwrap(),
            row["model"].as_str().unwrap(),
            row["heads"].as_str().unwrap(),
            row["lam"].as_f64().unwrap()
        );
        assert!(section.contains(&cells), "{cells} not in {section}");
        let test = format!("{:.2}</td>", row["test"].as_f64().unwrap());
        assert!(section.contains(&test), "{test} not in {section}");
    }
    assert!(html.as_bytes() != first.as_slice());

    // A compared run without scores is named before anything runs.
    let err = stderr(&run_ok(&["report", s(&run), s(dir.path())], 2));
    assert!(err.contains("score"), "{err}");
}

/// The official release has no pixels: the sheets show each image's caption instead.
#[test]
fn without_pixels_the_sheets_show_captions() {
    let dir = tempdir();
    let run = dir.path().join("official");
    let release = shared_data().join("simat-release");
    // The release's tables and word vectors, the reference's seeded image embeddings.
    crate::simat::import_release(&run);
    run_ok(&["retrieve", s(&run), "--lambdas", "0,1"], 0);
    run_ok(&["score", s(&run)], 0);
    run_ok(&["report", s(&run), "--sheet-queries", "5"], 0);
    let html = std::fs::read_to_string(run.join("report/report.html")).unwrap();
    assert!(!html.contains("<img"), "no pixels, no images");
    assert_eq!(html.matches("class=\"sheet\"").count(), 5);
    assert_eq!(html.matches("class=\"caption-box\"").count(), 5 * 3);
    assert!(html.contains("This run has no pixels"));
    // Captions are the release's.
    let captions = std::fs::read_to_string(release.join("captions.txt")).unwrap();
    let first_box = html.split("class=\"caption-box\">").nth(1).unwrap();
    let caption = &first_box[..first_box.find('<').unwrap()];
    assert!(
        captions
            .lines()
            .any(|l| simat::report::esc(l.trim()) == caption),
        "`{caption}` is not a release caption"
    );
}
