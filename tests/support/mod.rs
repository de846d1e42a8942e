pub mod fake_obico;
