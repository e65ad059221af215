"""The study report: tables, statistics and figures from finished run directories."""
