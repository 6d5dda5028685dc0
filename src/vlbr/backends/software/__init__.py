"""The unicorn software-CPU backend."""
