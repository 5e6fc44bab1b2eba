use clap::Parser;
use gateway::{config::Settings, startup::Application};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = Settings::parse();
    let _telemetry = common::telemetry::init(&settings.log, "gateway");
    let app = Application::build(settings).await?;
    app.run_until_stopped(common::shutdown::signal()).await
}
