"""The validation report in the Prefect UI: a markdown summary and a table of problems."""

from __future__ import annotations

from prefect.artifacts import create_markdown_artifact, create_table_artifact

from schemas.validation import ValidationIssue, ValidationReport


def _grouped(report: ValidationReport) -> list[dict[str, str | int]]:
    """One line per code: severity, count, the first rows, the first message."""
    table: list[dict[str, str | int]] = []
    for severity, issues, counts in (
        ("error", report.errors, report.error_counts),
        ("warning", report.warnings, report.warning_counts),
    ):
        by_code: dict[str, list[ValidationIssue]] = {}
        for issue in issues:
            by_code.setdefault(issue.code.value, []).append(issue)
        for code, count in counts.items():
            kept = by_code.get(code, [])
            rows = ", ".join(
                (f"{i.file}:" if i.file else "") + str(i.row)
                for i in kept[:10]
                if i.row is not None
            )
            table.append(
                {
                    "severity": severity,
                    "code": code,
                    "count": count,
                    "first rows": rows or "-",
                    "example": kept[0].message if kept else "",
                }
            )
    return table


def render_markdown(report: ValidationReport) -> str:
    """The report as markdown: verdict, format, statistics, problems grouped by code."""
    verdict = (
        "**valid**" if report.ok else f"**invalid**: {sum(report.error_counts.values())} errors"
    )
    lines = [
        f"# Dataset validation: `{report.dataset}`",
        "",
        f"{verdict} for **{report.method.value}**; {sum(report.warning_counts.values())} warnings.",
        "",
        "| | |",
        "|---|---|",
        f"| rows | {report.row_count:,} |",
        f"| format | {report.detected_format or 'not recognised'} |",
        f"| suits | {', '.join(m.value for m in report.suitable_methods) or '-'} |",
        f"| columns | {', '.join(report.columns) or '-'} |",
        f"| checked in | {report.seconds:.2f} s |",
    ]
    if report.column_map:
        lines.append(f"| proposed column_map | `{report.column_map}` |")
    if report.token_stats:
        t = report.token_stats
        lines += [
            f"| tokens | {t.total_tokens:,} {'(exact)' if t.exact else f'(extrapolated from {t.rows:,} rows)'} |",
            f"| tokens per row | mean {t.mean_tokens:.0f}, p95 {t.p95_tokens}, max {t.max_tokens} |",
            f"| over max_length {t.max_length} | {t.over_max_length:,} |",
            f"| tokenizer | {t.tokenizer}{' + chat template' if t.chat_template else ''} |",
        ]
    table = _grouped(report)
    if table:
        lines += [
            "",
            "## Problems by code",
            "",
            "| severity | code | count | first rows | example |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {r['severity']} | `{r['code']}` | {r['count']:,} | {r['first rows']} | "
            f"{str(r['example']).replace('|', '/')} |"
            for r in table
        ]
    return "\n".join(lines) + "\n"


def publish_report(report: ValidationReport, *, key_prefix: str = "dataset") -> None:
    """Publish the markdown summary and the problems table as Prefect artifacts."""
    create_markdown_artifact(
        render_markdown(report),
        key=f"{key_prefix}-validation",
        description=f"Validation of {report.dataset}",
    )
    create_table_artifact(
        _grouped(report)
        or [
            {
                "severity": "-",
                "code": "none",
                "count": 0,
                "first rows": "-",
                "example": "no problems found",
            }
        ],
        key=f"{key_prefix}-validation-problems",
        description="Problems grouped by code",
    )
