"""Spark feature jobs' logic: demo world, behaviour sequences, statistics, training sets."""
