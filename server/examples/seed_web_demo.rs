//! Seeds a data folder with the demo accounts and cases, plus invented casework (visits,
//! voice, evidence, an amendment, register marks, one open conflict and a drawing whose file
//! the test uploads) in case-demo-1, for
//! the real-browser test of the web view (`scripts/test-browser.sh`). Start the server on the
//! same folder with `--demo` afterwards.
//!
//! Usage: `seed_web_demo DATA_DIR`

use anyhow::Context;
use doorstep_server::Config;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let data_dir = std::env::args()
        .nth(1)
        .context("usage: seed_web_demo DATA_DIR")?;
    let mut config = Config::with_data_dir(data_dir);
    config.demo = true;
    std::fs::create_dir_all(&config.data_dir).context("creating the data folder")?;
    let storage = doorstep_server::storage::open(&config.database_url()).await?;
    doorstep_server::demo::first_accounts(storage.as_ref(), &config).await?;
    doorstep_server::web::demo::add_demo_casework(storage.as_ref(), "case-demo-1").await?;
    // A drawing whose file the browser test uploads through the API, to see its thumbnail.
    let drawing = include_bytes!("../tests/browser/demo-drawing.png");
    doorstep_server::web::demo::add_demo_drawing(
        storage.as_ref(),
        "case-demo-1",
        drawing,
        "image/png",
    )
    .await?;
    Ok(())
}
