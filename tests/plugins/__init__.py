"""Extensions written the way a user would add them: one module each plus one registry entry."""
