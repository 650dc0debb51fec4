"""app/commands"""
