"""Guest-backed smokes: the use-case recipes, the daily loop and real-repo qualification."""
