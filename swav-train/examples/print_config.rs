//! Prints a training config as TOML: the built-in demo, or a preset's `[swav]` section with the
//! default `[data]` and `[run]` (`cargo run -p swav-train --example print_config -- demo`).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let name = std::env::args().nth(1).unwrap_or_else(|| "demo".into());
    let config = if name == "demo" {
        swav_train::TrainConfig::demo()
    } else {
        swav_train::TrainConfig {
            swav: swav_core::SwavConfig::preset(&name)?,
            ..swav_train::TrainConfig::demo()
        }
    };
    print!("{}", config.to_toml()?);
    Ok(())
}
