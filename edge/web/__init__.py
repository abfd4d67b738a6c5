"""The station page served by `lineguard run`: live view, review, threshold by eye, feedback (README, "Station page")."""
