"""Reports rebuilt from run records alone: tables, plots, Markdown and one self-contained HTML page."""
