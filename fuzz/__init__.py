"""Coverage-guided fuzzing (atheris) of everything that parses bytes an outsider sends."""
