"""Shared command-line helpers of the scripts."""

import argparse


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Keep the layout of a script's docstring and show each option's default in `--help`."""
