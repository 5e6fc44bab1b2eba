use appointment_service::{config::Settings, startup::Application};
use clap::Parser;

fn main() -> anyhow::Result<()> {
    let settings = Settings::parse();
    common::runtime::run(settings.runtime, async move {
        let _telemetry = common::telemetry::init(&settings.log, "appointment-service");
        let app = Application::build(settings).await?;
        app.run_until_stopped(common::shutdown::signal()).await
    })
}
