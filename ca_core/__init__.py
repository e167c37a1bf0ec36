"""Pure domain logic of shomei: names, profiles, rules, errors. No I/O."""
