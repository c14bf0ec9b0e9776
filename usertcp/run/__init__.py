"""`usertcp run`: a program in a network namespace whose every connection goes through usertcp."""
